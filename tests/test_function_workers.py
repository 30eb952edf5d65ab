"""Functions in runtime v2 with a real Node.js: deploy and invoke through the ``local`` provider (results, events,
async functions), the limits (timeout and memory end the worker; everything else answers right after), thrown
errors without stack traces, build checks, the function's environment and nothing else, require() from the
project's node_modules, captured console lines, redeploy / undeploy / restart."""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
import uuid

import pytest

from cortex.integrations.functions.local import LocalProvider
from cortex.integrations.functions.provider import BuildResult, InvokeResult, RuntimeHandle

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="needs node")

SENTINEL = "CORTEX_WORKERS_TEST_SENTINEL"
MEMORY_MIB = 256


def wait_healthy(provider: LocalProvider, handle: RuntimeHandle, seconds: float = 10.0) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        body = provider.health(handle, timeout=1.0)
        if body is not None:
            return body
        time.sleep(0.02)
    raise AssertionError(f"no health answer within {seconds} s")


def spec(slug: str, code: str, *, timeout: int = 3000, memory: int = 64, env: dict | None = None,
         entrypoint: str = "handler", version: int = 1) -> dict:
    return {"slug": slug, "functionId": f"fn-{slug}", "versionId": f"{slug}-v{version}", "version": version,
            "code": code, "entrypoint": entrypoint, "timeout": timeout, "memoryMib": memory,
            "env": {"CORTEX_API_URL": "http://127.0.0.1:9", "CORTEX_PROJECT_ID": "p"} if env is None else env}


def request(handle: RuntimeHandle, method: str, path: str) -> tuple[int, object]:
    connection = http.client.HTTPConnection("127.0.0.1", handle.port, timeout=5)
    try:
        connection.request(method, path, headers={"X-Cortex-Runtime-Token": handle.token})
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        connection.close()


@pytest.fixture
def provider(tmp_path) -> LocalProvider:
    return LocalProvider(tmp_path / "functions")


@pytest.fixture
def project_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def runtime(provider, project_id, monkeypatch):
    """A running v2 runtime (a sentinel in our environment first); stopped afterwards."""
    monkeypatch.setenv(SENTINEL, "must-not-leak")
    provider.write_config(project_id, {"projectId": project_id, "env": {"PROJECT_ONLY": "x"},
                                       "apiUrl": "http://127.0.0.1:9", "version": "v2"})
    handle = provider.start(project_id, "v2", MEMORY_MIB)
    wait_healthy(provider, handle)
    yield handle
    provider.stop(handle, timeout=2)


def ok(result: InvokeResult) -> dict:
    assert result.outcome == "ok", result
    assert result.error is None
    return result.result


# --- results ----------------------------------------------------------------------------------------------


def test_deploy_and_invoke_results(provider, project_id, runtime):
    assert provider.health(runtime)["version"] == "v2"
    provider.deploy(project_id, spec("echo", """
        exports.handler = (event, ctx) => ({
          statusCode: 201,
          headers: { 'X-Echo': 'yes', 'X-Count': 3 },
          body: { event, requestId: ctx.requestId, user: ctx.user },
        });
    """), runtime)
    provider.deploy(project_id, spec("text", """
        exports.handler = async (event) => {
          await new Promise((resolve) => setTimeout(resolve, 20));
          return { body: `hello ${event.name}` };
        };
    """), runtime)
    provider.deploy(project_id, spec("plain", """
        exports.handler = (event) => event.kind === 'array' ? [1, 2, 3]
          : event.kind === 'number' ? 42 : event.kind === 'none' ? undefined : { just: 'data' };
    """), runtime)
    event = {"name": "Ödön ✓ \ud800", "nested": {"list": [1, "two", None]}}  # a lone surrogate too
    result = ok(provider.invoke(runtime, "echo", event, {"requestId": "req-1", "user": {"id": "u1"}}))
    assert result == {"statusCode": 201, "headers": {"X-Echo": "yes", "X-Count": "3"},
                      "body": {"event": event, "requestId": "req-1", "user": {"id": "u1"}}}
    assert ok(provider.invoke(runtime, "text", {"name": "Ödön"}, {})) == {
        "statusCode": 200, "headers": {}, "body": "hello Ödön"}  # async, a string body, statusCode defaulted
    assert ok(provider.invoke(runtime, "plain", {"kind": "array"}, {}))["body"] == [1, 2, 3]
    assert ok(provider.invoke(runtime, "plain", {"kind": "number"}, {})) == {"statusCode": 200, "headers": {},
                                                                           "body": 42}
    assert ok(provider.invoke(runtime, "plain", {"kind": "none"}, {}))["body"] is None
    assert ok(provider.invoke(runtime, "plain", {"kind": "object"}, {}))["body"] == {"just": "data"}
    warm = provider.invoke(runtime, "echo", {}, {})
    assert warm.outcome == "ok" and warm.duration_ms < 1000
    assert sorted(provider.deployed(project_id)) == ["echo", "plain", "text"]
    status, listed = request(runtime, "GET", "/functions")
    assert status == 200
    assert [(f["slug"], f["versionId"], f["version"]) for f in listed] == [
        ("echo", "echo-v1", 1), ("plain", "plain-v1", 1), ("text", "text-v1", 1)]
    assert all(1 <= f["workers"] <= 4 for f in listed)
    missing = provider.invoke(runtime, "no-such-fn", {}, {})
    assert missing.outcome == "not_found" and missing.result is None


def test_handlers_and_invalid_responses(provider, project_id, runtime):
    provider.deploy(project_id, spec("events", """
        exports.handler = () => 'main';
        exports.onSessionCreated = (event) => ({ body: `session ${event.id}` });
        exports.bad = () => ({ statusCode: 99 });
        exports.cyclic = () => { const a = {}; a.self = a; return { body: a }; };
    """), runtime)
    assert ok(provider.invoke(runtime, "events", {"id": 7}, {}, handler="onSessionCreated"))["body"] == "session 7"
    assert ok(provider.invoke(runtime, "events", {}, {}))["body"] == "main"
    missing = provider.invoke(runtime, "events", {}, {}, handler="onNothing")
    assert missing.outcome == "error" and "onNothing" in missing.error
    inherited = provider.invoke(runtime, "events", {}, {}, handler="constructor")
    assert inherited.outcome == "error"
    bad = provider.invoke(runtime, "events", {}, {}, handler="bad")
    assert bad.outcome == "error" and "statusCode" in bad.error
    cyclic = provider.invoke(runtime, "events", {}, {}, handler="cyclic")
    assert cyclic.outcome == "error" and "JSON" in cyclic.error


# --- limits -----------------------------------------------------------------------------------------------


def test_a_timeout_terminates_the_worker_and_nothing_else_waits(provider, project_id, runtime):
    provider.deploy(project_id, spec("spin", """
        let calls = 0;
        exports.handler = (event) => {
          calls++;
          if (event.loop) { console.log('spinning'); while (true) {} }
          return { body: { calls } };
        };
    """, timeout=1500), runtime)
    provider.deploy(project_id, spec("other", "exports.handler = () => 'other';"), runtime)
    assert ok(provider.invoke(runtime, "spin", {}, {}))["body"] == {"calls": 1}
    answers: dict[str, object] = {}

    def spin() -> None:
        started = time.monotonic()
        answers["spin"] = provider.invoke(runtime, "spin", {"loop": True}, {"requestId": "r-spin"})
        answers["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=spin)
    thread.start()
    time.sleep(0.2)
    assert ok(provider.invoke(runtime, "other", {}, {}))["body"] == "other"  # while spin loops
    assert ok(provider.invoke(runtime, "spin", {}, {}))["body"]["calls"] >= 1  # another worker of the same function
    assert "spin" not in answers  # both answered while the loop was still running
    thread.join(5)
    result = answers["spin"]
    assert result.outcome == "timeout" and result.result is None and "1500 ms" in result.error
    assert 1.45 <= answers["elapsed"] < 1.5 + 0.75
    assert [line["message"] for line in result.logs] == ["spinning"]  # what it printed before it was ended
    assert result.logs[0]["requestId"] == "r-spin"
    # the looping worker is gone: the function answers at once, from a worker that never looped
    assert ok(provider.invoke(runtime, "spin", {}, {}))["statusCode"] == 200
    assert ok(provider.invoke(runtime, "other", {}, {}))["body"] == "other"


def test_a_slow_module_load_times_out_the_invocation_but_goes_on_loading(provider, project_id, runtime):
    code = """
        const until = Date.now() + 2500;
        while (Date.now() < until) {}  // a heavy require() at the top level
        exports.handler = () => 'warm now';
    """
    provider.deploy(project_id, spec("heavy", code, timeout=400), runtime)  # prewarming waits 1 s at most
    first = provider.invoke(runtime, "heavy", {}, {})
    assert first.outcome == "timeout" and "still loading" in first.error
    time.sleep(1.6)
    assert ok(provider.invoke(runtime, "heavy", {}, {}))["body"] == "warm now"  # the same worker, now loaded
    status, listed = request(runtime, "GET", "/functions")
    assert listed[0]["workers"] >= 1


def test_a_memory_hog_is_ended(provider, project_id, runtime):
    provider.deploy(project_id, spec("hog", """
        const kept = [];
        exports.handler = (event) => {
          if (!event.hog) return 'fine';
          console.log('growing');
          for (;;) kept.push(new Array(100000).fill(kept.length));
        };
    """, timeout=10000, memory=64), runtime)
    provider.deploy(project_id, spec("other", "exports.handler = () => 'other';"), runtime)
    started = time.monotonic()
    result = provider.invoke(runtime, "hog", {"hog": True}, {"requestId": "r-hog"})
    assert result.outcome == "memory", result
    assert result.error == "the function exceeded its memory limit of 64 MB"
    assert time.monotonic() - started < 8
    assert [line["message"] for line in result.logs] == ["growing"]
    assert ok(provider.invoke(runtime, "other", {}, {}))["body"] == "other"
    assert ok(provider.invoke(runtime, "hog", {}, {}))["body"] == "fine"
    assert provider.health(runtime)["status"] == "ok"


def test_a_throw_is_an_error_with_its_message_only(provider, project_id, runtime):
    provider.deploy(project_id, spec("thrower", """
        function deep() { throw new TypeError('the answer is not 42'); }
        exports.handler = async (event) => {
          console.error('about to fail');
          if (event.string) throw 'a plain string';
          if (event.later) await Promise.reject(new Error('rejected later'));
          deep();
        };
    """), runtime)
    result = provider.invoke(runtime, "thrower", {}, {"requestId": "r-throw"})
    assert result.outcome == "error" and result.error == "the answer is not 42"
    assert "at " not in result.error and "deep" not in result.error
    assert [(line["level"], line["message"], line["requestId"]) for line in result.logs] == [
        ("error", "about to fail", "r-throw")]
    assert provider.invoke(runtime, "thrower", {"string": True}, {}).error == "a plain string"
    assert provider.invoke(runtime, "thrower", {"later": True}, {}).error == "rejected later"


def test_a_worker_that_dies_is_replaced(provider, project_id, runtime):
    provider.deploy(project_id, spec("fragile", """
        exports.handler = async (event) => {
          if (event.exit) process.exit(3);
          if (event.during) { Promise.reject(new Error('unhandled during')); await new Promise((r) => setTimeout(r, 50)); }
          if (event.after) setTimeout(() => { throw new Error('thrown after answering'); }, 5);
          return 'alive';
        };
    """), runtime)
    exited = provider.invoke(runtime, "fragile", {"exit": True}, {})
    assert exited.outcome == "error" and "exited" in exited.error
    during = provider.invoke(runtime, "fragile", {"during": True}, {})
    assert during.outcome == "error" and during.error == "unhandled during"
    for _ in range(3):  # the answer counts; the worker dies after it and the next call gets a new one
        assert ok(provider.invoke(runtime, "fragile", {"after": True}, {}))["body"] == "alive"
        time.sleep(0.05)
    assert ok(provider.invoke(runtime, "fragile", {}, {}))["body"] == "alive"


def test_queued_invocations_share_four_workers(provider, project_id, runtime):
    provider.deploy(project_id, spec("slow", """
        exports.handler = async (event) => {
          await new Promise((resolve) => setTimeout(resolve, 150));
          return { body: event.n };
        };
    """, timeout=5000), runtime)
    results: list[InvokeResult] = []
    threads = [threading.Thread(target=lambda n=n: results.append(provider.invoke(runtime, "slow", {"n": n}, {})))
               for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(ok(result)["body"] for result in results) == list(range(10))
    status, listed = request(runtime, "GET", "/functions")
    assert listed[0]["workers"] <= 4


# --- builds -----------------------------------------------------------------------------------------------


def test_build_checks(provider, project_id, runtime):
    good = provider.build(runtime, """
        console.log('loading', process.env.SECRET === undefined);
        exports.handler = () => 'ok';
        exports.onSessionCreated = () => {};
        exports.onPlayerJoined = async () => {};
        exports.onlyLowercase = () => {};
        exports.onNotAFunction = 42;
        exports.helper = () => {};
    """, "handler")
    assert isinstance(good, BuildResult)
    assert good.ok is True and good.error is None
    assert good.handlers == ("onPlayerJoined", "onSessionCreated")
    assert "loading true" in good.logs
    syntax = provider.build(runtime, "exports.handler = () => {\n  return 1;\n}}\n", "handler")
    assert syntax.ok is False and syntax.error.startswith("SyntaxError: ") and "(line 3)" in syntax.error
    missing = provider.build(runtime, "exports.other = () => 1;", "handler")
    assert missing.ok is False and "handler" in missing.error
    not_function = provider.build(runtime, "exports.handler = 42;", "handler")
    assert not_function.ok is False and "number" in not_function.error
    throws = provider.build(runtime, "throw new Error('no config');", "handler")
    assert throws.ok is False and "no config" in throws.error and "at " not in throws.error
    started = time.monotonic()
    looping = provider.build(runtime, "exports.handler = () => 1;\nwhile (true) {}\n", "handler", timeout=3.0)
    assert looping.ok is False and "took longer than" in looping.error
    assert time.monotonic() - started < 3.0
    assert provider.health(runtime)["status"] == "ok"
    assert provider.build(runtime, "exports.handler = () => 1;", "handler").ok is True  # builds go on


# --- environment, modules, logs ---------------------------------------------------------------------------


def test_the_function_sees_exactly_its_environment(provider, project_id, runtime):
    env_a = {"CORTEX_API_URL": "http://127.0.0.1:9", "CORTEX_PROJECT_ID": project_id, "SHARED": "a",
             "ONLY_A": "secret-a", "EMPTY": ""}
    env_b = {"CORTEX_API_URL": "http://127.0.0.1:9", "CORTEX_PROJECT_ID": project_id, "SHARED": "b"}
    code = "exports.handler = () => ({ body: { ...process.env } });"
    provider.deploy(project_id, spec("env-a", code, env=env_a), runtime)
    provider.deploy(project_id, spec("env-b", code + "\nprocess.env.LEAK = 'from b';", env=env_b), runtime)
    assert ok(provider.invoke(runtime, "env-b", {}, {}))["body"] == {**env_b, "LEAK": "from b"}
    seen = ok(provider.invoke(runtime, "env-a", {}, {}))["body"]
    assert seen == env_a  # no sentinel of ours, no NODE_ENV of the runtime, no PROJECT_ONLY, nothing of env-b
    build = provider.build(runtime, "console.log(JSON.stringify(process.env)); exports.handler = () => 1;", "handler")
    assert build.ok and build.logs.endswith("{}")


def test_require_resolves_the_project_node_modules(provider, project_id, runtime):
    package = provider.project_dir(project_id) / "node_modules" / "shout"
    package.mkdir(parents=True)
    (package / "package.json").write_text('{"name": "shout", "version": "1.0.0", "main": "index.js"}')
    (package / "index.js").write_text("module.exports = (text) => text.toUpperCase() + '!';\n")
    provider.deploy(project_id, spec("loud", """
        const shout = require('shout');
        const { createHash } = require('node:crypto');
        exports.handler = (event) => ({ body: shout(event.text) + createHash('sha1').update('x').digest('hex').slice(0, 4) });
    """), runtime)
    assert ok(provider.invoke(runtime, "loud", {"text": "hey"}, {}))["body"] == "HEY!11f6"
    assert provider.build(runtime, "require('shout'); exports.handler = () => 1;", "handler").ok is True
    missing = provider.build(runtime, "require('not-installed'); exports.handler = () => 1;", "handler")
    assert missing.ok is False and "not-installed" in missing.error


def test_console_lines_are_captured_per_invocation(provider, project_id, runtime):
    provider.deploy(project_id, spec("chatty", """
        console.log('module loading');
        exports.handler = (event) => {
          console.log('hello %s', 'world', { n: 1 });
          console.info('info');
          console.warn('careful');
          console.error(new Error('shown').message);
          console.debug('details');
          process.stdout.write('raw stdout\\n');
          if (event.many) for (let i = 0; i < 500; i++) console.log('line', i);
          if (event.fail) throw new Error('failed after logging');
          return 'done';
        };
    """), runtime)
    first = provider.invoke(runtime, "chatty", {}, {"requestId": "req-a"})
    assert first.outcome == "ok"
    assert [(line["level"], line["message"]) for line in first.logs] == [
        ("log", "module loading"), ("log", "hello world { n: 1 }"), ("info", "info"), ("warn", "careful"),
        ("error", "shown"), ("debug", "details"), ("log", "raw stdout")]
    assert all(line["requestId"] == "req-a" for line in first.logs[1:])
    assert all(line["time"].endswith("Z") and "T" in line["time"] for line in first.logs)
    second = provider.invoke(runtime, "chatty", {"fail": True}, {"requestId": "req-b"})
    assert second.outcome == "error" and second.error == "failed after logging"
    assert [line["message"] for line in second.logs][0] == "hello world { n: 1 }"  # no module line again
    assert {line["requestId"] for line in second.logs} == {"req-b"}
    many = provider.invoke(runtime, "chatty", {"many": True}, {"requestId": "req-c"})
    assert len(many.logs) == 201 and "dropped" in many.logs[-1]["message"] and many.logs[-1]["level"] == "warn"
    runtime_log = provider.log_path(project_id).read_text()
    assert "hello world" not in runtime_log and "raw stdout" not in runtime_log and "module loading" not in runtime_log


# --- deployment -------------------------------------------------------------------------------------------


def test_redeploy_undeploy_and_restart(provider, project_id, runtime):
    first = spec("greet", """
        exports.handler = async (event) => {
          if (event.slow) await new Promise((resolve) => setTimeout(resolve, 400));
          return 'version one';
        };
    """)
    provider.deploy(project_id, first, runtime)
    assert ok(provider.invoke(runtime, "greet", {}, {}))["body"] == "version one"
    slow: dict[str, InvokeResult] = {}
    thread = threading.Thread(target=lambda: slow.update(result=provider.invoke(runtime, "greet", {"slow": True}, {})))
    thread.start()
    time.sleep(0.1)
    provider.deploy(project_id, spec("greet", "exports.handler = () => 'version two';", version=2), runtime)
    assert ok(provider.invoke(runtime, "greet", {"slow": True}, {}))["body"] == "version two"  # at once
    thread.join(5)
    assert ok(slow["result"])["body"] == "version one"  # the retired worker finished what it had started
    status, listed = request(runtime, "GET", "/functions")
    assert listed == [{"slug": "greet", "versionId": "greet-v2", "version": 2, "workers": 1}]

    provider.deploy(project_id, spec("keep", "exports.handler = () => 'kept';"), runtime)
    provider.undeploy(project_id, "greet", runtime)
    assert provider.invoke(runtime, "greet", {}, {}).outcome == "not_found"
    provider.undeploy(project_id, "greet", runtime)  # idempotent
    assert provider.deployed(project_id) == ["keep"]
    assert request(runtime, "DELETE", "/functions/greet")[0] == 404

    provider.stop(runtime, timeout=2)
    assert provider.invoke(runtime, "keep", {}, {}).outcome == "unavailable"
    provider.deploy(project_id, spec("later", "exports.handler = () => 'deployed while stopped';"), runtime)
    again = provider.start(project_id, "v2", MEMORY_MIB)
    try:
        assert wait_healthy(provider, again)["functions"] == 2
        assert ok(provider.invoke(again, "keep", {}, {}))["body"] == "kept"
        assert ok(provider.invoke(again, "later", {}, {}))["body"] == "deployed while stopped"
        assert provider.invoke(again, "greet", {}, {}).outcome == "not_found"
    finally:
        provider.stop(again, timeout=2)


def test_a_module_that_fails_to_load_answers_errors(provider, project_id, runtime):
    provider.deploy(project_id, spec("broken", "exports.handler = () => 1;\nthrow new Error('bad config');"), runtime)
    provider.deploy(project_id, spec("syntax", "exports.handler = () => {"), runtime)
    for _ in range(2):
        broken = provider.invoke(runtime, "broken", {}, {})
        assert broken.outcome == "error" and "bad config" in broken.error
    syntax = provider.invoke(runtime, "syntax", {}, {})
    assert syntax.outcome == "error" and syntax.error.startswith("SyntaxError")


def test_requests_need_the_token(provider, project_id, runtime):
    connection = http.client.HTTPConnection("127.0.0.1", runtime.port, timeout=5)
    try:
        connection.request("POST", "/invoke/x", body=b"{}", headers={"X-Cortex-Runtime-Token": "wrong" * 8})
        assert connection.getresponse().status == 401
    finally:
        connection.close()
    stranger = RuntimeHandle(pid=runtime.pid, port=runtime.port, token="not-the-token-at-all", version="v2",
                             started_at=runtime.started_at, project_id=project_id)
    assert provider.invoke(stranger, "x", {}, {}).outcome == "unavailable"
