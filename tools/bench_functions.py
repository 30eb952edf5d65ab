#!/usr/bin/env python3
"""Benchmark functions invoked through Cortex (``ANY /invoke/{projectId}/{slug}``) on one Cortex server process.

Issue 18's goals: a trivial function invoked through Cortex at >= 800 invocations/s on one Cortex process, a p50
overhead over calling the runtime directly below 3 ms, the first invoke after a publish within 300 ms, and the
p99 of a healthy function while another one loops forever (no errors).

The server is the real thing, started like ``tools/bench_ingest.py`` does (a subprocess that patches for gevent,
builds the app with ``create_app``, migrates a fresh database and serves through ``make_server``) with the engines
``cortex serve`` runs, among them ``functions-runtime`` (the supervisor, ``cortex.engines.functions``), which runs
the project's Node.js runtime (``cortex/integrations/functions/node/runtime-<latest>.js``) as its child process.
The subprocess seeds one user and project (``bench_ingest.seed_projects``) and, while it serves, keeps the
runtime's handle (port, token, pid: ``models.functions.handle_of``) in a file of its data directory, so this
process can call the runtime directly. Everything else goes through the HTTP API with the user's access token:

- ``activateFunctions`` (local/local/local), then ``getSettings`` is polled until ``isActivated``;
- ``createFunction`` ``trivial`` (``exports.handler = async () => ({statusCode: 200, body: 'ok-N'})``, authMode
  public) and ``spin`` (``exports.handler = async () => { while (true) {} }``, timeout 5000 ms, public);
- **first invoke after publish**: ``--publishes`` (5) times: ``updateFunction`` (the body becomes ``ok-N``, so
  the new version is told from the old one), ``publishVersion``, then ``GET /invoke/{projectId}/trivial`` back to
  back on one keep-alive connection until it answers 200 with ``ok-N``: the time from the publish's answer to
  that answer (the first publish is the function's first deployment: a cold worker).

Rows (``tools/_loadgen.py``: gevent greenlets on raw keep-alive sockets, ``--connections`` (20) of them, 1 s
warm-up + ``--duration`` (10) s):

1. paced at ``--rate`` (200) invocations/s: ``GET /invoke/{projectId}/trivial`` through Cortex, and the same
   invocation sent to the runtime itself (``POST http://127.0.0.1:<port>/invoke/trivial`` with
   ``X-Cortex-Runtime-Token`` and the ``{event, ctx, handler}`` body Cortex sends): **overhead = p50 through
   Cortex - p50 direct**, the headline (at a moderate rate the overhead is the invocation's own cost, not
   mostly queueing — as long as the server's CPU share printed with the row is well below 100 %);
2. unpaced (saturation): the same two; through Cortex gives the invocations/s, the overhead there is extra (it
   includes queueing);
3. ``trivial`` paced at ``--rate`` through Cortex while ``--spinners`` (4) clients keep invoking ``spin`` (each
   invocation loops until the runtime terminates its worker at the 5 s timeout: 504): p50/p99 and errors of the
   healthy function.

CPUs: the server is pinned to one CPU and this process (the load generator) to another, like the other benches.
The runtime is a child of the server and inherits its CPU; ``--runtime-cpu`` moves it (every thread of the node
process) elsewhere: ``auto`` (default) never shares the server's CPU (as in production, where the Cortex process's
core is its own): the third CPU when there is one, else the load generator's; ``server`` leaves it where it
inherited (a one-core host), ``loadgen``, ``all`` (every online CPU) or a CPU number. The runtime's CPU share is
printed with each row.

PASS when: >= 800 invocations/s through Cortex unpaced (no errors), paced p50 overhead < 3 ms, every first invoke
after a publish < 300 ms, and no error for ``trivial`` while ``spin`` loops. Exit 1 on FAIL. ``--no-calibrate``
skips the ``GET /api`` calibration row. Afterwards the server removes the seeded tenant (functions included) and
its runtime stops with its engines.

Usage:
    tools/bench_functions.py [--duration 10] [--connections 20] [--rate 200] [--publishes 5] [--spinners 4]
                             [--runtime-cpu auto] [--no-calibrate] [--json] [--profile server.pstats]
                             [--database-url postgresql://postgres@127.0.0.1:5432/benchfunctions]
                             [--redis-url redis://127.0.0.1:6379/10]
"""

from __future__ import annotations

# As in bench_ingest.py: nothing that pulls in socket/threading/ssl before the server subprocess has patched.
import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _loadgen  # noqa: E402 - safe before the patch: it imports neither socket, threading nor ssl
import bench_ingest  # noqa: E402 - the same (its top level imports only _loadgen and the standard library)

HOST = _loadgen.HOST
TARGET_RATE = 800.0  # invocations/s through Cortex, unpaced
TARGET_OVERHEAD_MS = 3.0  # p50 through Cortex - p50 direct, paced
TARGET_FIRST_INVOKE_MS = 300.0  # publish answered -> first 200 of the new version
ENV_PREFIX = "BENCH_FUNCTIONS_"  # how the parent passes settings to the server subprocess
HANDLE_FILE = "runtime-handle.json"  # in the server's data dir: the running runtime's handle (0600)
ACTIVATION_WAIT = 180.0  # seconds for activateFunctions to complete (it runs npm install)
FIRST_INVOKE_WAIT = 10.0  # seconds to wait for the new version's first 200 after a publish
SPIN_TIMEOUT_MS = 5000
SPIN_CLIENT_TIMEOUT = 30.0  # socket timeout of a spin client (the answer comes after ~5 s)
TRIVIAL_CODE = "exports.handler = async () => ({statusCode: 200, body: '%s'});"
SPIN_CODE = "exports.handler = async () => { while (true) {} };"


# ----------------------------------------------------------------- server subprocess


def serve(args) -> int:
    """The real app with the engines of ``cortex serve``; seeds a user and a project; prints {"port", "pid",
    "token", "project"}; keeps the project's runtime handle in ``<data dir>/runtime-handle.json``."""
    _loadgen.start_server_process(args.cpu)

    import gevent

    from models.base import db

    def setting(name, default=""):
        return _loadgen.server_setting(ENV_PREFIX, name, default)

    app, settings = _loadgen.cortex_app(args, redis_url=setting("REDIS_URL"))
    with db.connection_context():
        user = _loadgen.bench_user()
        project = bench_ingest.seed_projects(user, 1, "Functions bench")[0]
    gevent.spawn(write_handle, project["id"], os.path.join(args.data_dir, HANDLE_FILE))
    return _loadgen.serve_app(app, settings, {"project": project["id"]}, user=user, engines=True,
                              profile=setting("PROFILE") or None, cleanup=remove_functions)


def write_handle(project_id: str, path: str) -> None:
    """Keep the runtime's handle (as the supervisor recorded it) in ``path`` while it runs ({} while it does not)."""
    import gevent

    from models.base import own_connection
    from models.functions import FunctionRuntime, handle_of

    written = None
    while True:
        try:
            with own_connection():
                row = FunctionRuntime.get_or_none(FunctionRuntime.project == project_id)
                handle = handle_of(row) if row is not None and row.runtime_status == "running" else None
            handle = handle or {}
            if handle != written:
                fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as file:
                    json.dump(handle, file)
                os.replace(path + ".tmp", path)
                written = handle
        except Exception as exc:  # keep watching; the parent times out if it never appears
            print(f"bench: reading the runtime handle failed: {exc!r}", file=sys.stderr)
        gevent.sleep(0.1)


def remove_functions(user) -> None:
    """The functions and the runtime row of the seeded projects, first (their versions, deployments, logs and
    queued events go with them); the projects' cascades would take them too, this keeps the order explicit."""
    from models.function_code import Function
    from models.functions import FunctionRuntime
    from models.identity import Project

    projects = Project.select(Project.id).where(Project.tenant == user.tenant_id)
    Function.delete().where(Function.project.in_(projects)).execute()
    FunctionRuntime.delete().where(FunctionRuntime.project.in_(projects)).execute()


# ----------------------------------------------------------------- load generator (parent): the API


class Api:
    """The server's HTTP API as the bench user (one fresh connection per call)."""

    def __init__(self, server, timeout: float = 60.0):
        self.port = server.port
        self.token = server.info["token"]
        self.timeout = timeout

    def call(self, method: str, path: str, body=None, expect: int = 200):
        status, data = _loadgen.fetch(self.port, _loadgen.build_request(path, self.token, method=method, body=body),
                                      self.timeout)
        if status != expect:
            raise _loadgen.BenchError(f"{method} {path} answered {status} (expected {expect}): {data[:400]!r}")
        return json.loads(data) if data else None


def activate(api: Api, project_id: str) -> float:
    """activateFunctions and wait for ``isActivated``; seconds it took."""
    base = f"/api/projects/{project_id}/functions/settings"
    began = time.monotonic()
    api.call("POST", f"{base}/activate", {"locationCity": "local", "locationContinent": "local",
                                          "locationCountry": "local"}, expect=201)
    step = None
    while time.monotonic() - began < ACTIVATION_WAIT:
        settings = api.call("GET", base)
        if settings.get("isActivated"):
            return time.monotonic() - began
        step = settings.get("activationStep")
        if step == "error":
            raise _loadgen.BenchError(f"activating functions failed: {settings.get('activationError')}")
        time.sleep(0.1)
    raise _loadgen.BenchError(f"functions not activated within {ACTIVATION_WAIT:g} s (step {step})")


def read_handle(workdir: str, limit: float = 30.0, not_pid: int | None = None) -> dict:
    """The runtime's handle the server keeps in its data dir (waiting at most ``limit`` s for one, of another pid
    than ``not_pid`` when given)."""
    path = os.path.join(workdir, "cortex-data", HANDLE_FILE)
    deadline = time.monotonic() + limit
    while True:
        try:
            with open(path) as file:
                handle = json.load(file)
            if handle.get("port") and handle.get("pid") != not_pid:
                return handle
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise _loadgen.BenchError(f"the functions runtime is not running (no handle within {limit:g} s)")
        time.sleep(0.1)


def create_function(api: Api, project_id: str, name: str, code: str, **fields) -> dict:
    return api.call("POST", f"/api/projects/{project_id}/functions",
                    {"name": name, "slug": name, "code": code, "authMode": "public", **fields}, expect=201)


def publish(api: Api, project_id: str, function_id: str, changelog: str) -> dict:
    answer = api.call("POST", f"/api/projects/{project_id}/functions/{function_id}/publish",
                      {"changelog": changelog}, expect=201)
    version = answer["version"]
    if version["status"] != "ready":
        raise _loadgen.BenchError(f"version {version['version']} of {function_id} did not build: "
                                  f"{version.get('buildError')}")
    return version


def first_invokes(api: Api, project_id: str, function_id: str, count: int) -> list[dict]:
    """``count`` times: the trivial function's draft answers ``ok-N``, publish it, then invoke it back to back until
    it answers 200 with ``ok-N``; [{version, publish_ms, first_invoke_ms, polls, stale, errors}]."""
    path = f"/invoke/{project_id}/trivial"
    raw = _loadgen.build_request(path, accept="*/*")
    outcomes = []
    for number in range(1, count + 1):
        marker = f"ok-{number}"
        api.call("PUT", f"/api/projects/{project_id}/functions/{function_id}", {"draftCode": TRIVIAL_CODE % marker})
        connection = _loadgen.HttpConnection(api.port, 10.0)  # opened before the clock starts
        try:
            began = time.perf_counter()
            version = publish(api, project_id, function_id, f"bench publish {number}")
            published = time.perf_counter()
            polls, stale, errors, first = 0, 0, {}, None
            while time.perf_counter() - published < FIRST_INVOKE_WAIT:
                polls += 1
                status, body, keep = connection.request(raw)
                if status == 200 and body == marker.encode():
                    first = time.perf_counter() - published
                    break
                if status == 200:
                    stale += 1  # the previous version answered
                else:
                    errors[status] = errors.get(status, 0) + 1
                if not keep:
                    connection.close()
                    connection = _loadgen.HttpConnection(api.port, 10.0)
        finally:
            connection.close()
        outcomes.append({"version": version["version"], "publish_ms": round((published - began) * 1000, 1),
                         "first_invoke_ms": None if first is None else round(first * 1000, 1), "polls": polls,
                         "stale": stale, "errors": errors})
    return outcomes


# ----------------------------------------------------------------- load generator (parent): the rows


def direct_request(handle: dict, project_id: str, function_id: str, version: int) -> bytes:
    """The runtime's ``POST /invoke/trivial`` as Cortex sends it for ``GET /invoke/{projectId}/trivial``: the
    token header and ``{event, ctx, handler}`` (``cortex.http.invoke._event`` and the ctx it builds)."""
    event = {"method": "GET", "path": f"/invoke/{project_id}/trivial", "query": {},
             "headers": {"host": HOST, "accept": "*/*", "user-agent": "cortex-bench"}, "body": None}
    ctx = {"projectId": project_id, "functionId": function_id, "slug": "trivial", "version": version,
           "requestId": "0" * 32}
    body = json.dumps({"event": event, "ctx": ctx, "handler": None}, separators=(",", ":")).encode()
    head = (f"POST /invoke/trivial HTTP/1.1\r\nHost: {HOST}:{handle['port']}\r\nAccept: application/json\r\n"
            f"User-Agent: cortex-bench\r\nX-Cortex-Runtime-Token: {handle['token']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body


def check_answers(server, cortex_raw: bytes, handle: dict, direct_raw: bytes) -> str:
    """One invocation each way must answer the function's ``ok-…``; the body it answered."""
    status, body = _loadgen.fetch(server.port, cortex_raw, 10.0)
    if status != 200 or not body.startswith(b"ok-"):
        raise _loadgen.BenchError(f"GET /invoke/…/trivial answered {status}: {body[:300]!r}")
    status, direct = _loadgen.fetch(handle["port"], direct_raw, 10.0)
    answer = json.loads(direct) if status == 200 else {}
    if answer.get("outcome") != "ok" or (answer.get("result") or {}).get("body") != body.decode():
        raise _loadgen.BenchError(f"the runtime's POST /invoke/trivial answered {status}: {direct[:300]!r}")
    return body.decode()


class RuntimeCpu:
    """The runtime process's CPU share over a row's measured window (marks taken when request_loop takes its)."""

    def __init__(self, pid: int, duration: float):
        import gevent

        self.pid, self.marks = pid, {}
        self.greenlets = [gevent.spawn_later(_loadgen.WARMUP, self.mark, "start"),
                          gevent.spawn_later(_loadgen.WARMUP + duration, self.mark, "end")]

    def mark(self, name: str) -> None:
        self.marks[name] = (time.perf_counter(), _loadgen.process_cpu_seconds(self.pid))

    def share(self) -> float | None:
        import gevent

        gevent.joinall(self.greenlets, timeout=5)
        if "start" not in self.marks or "end" not in self.marks:
            return None
        (t0, c0), (t1, c1) = self.marks["start"], self.marks["end"]
        return None if c0 is None or c1 is None or t1 <= t0 else (c1 - c0) / (t1 - t0)


def row(key: str, label: str, port: int, raw: bytes, args, *, rate: float, server_pid: int | None,
        runtime_pid: int) -> _loadgen.Result:
    """One row of ``raw`` (paced at ``rate``, or unpaced with 0), the runtime's CPU share in ``extra``."""
    runtime = RuntimeCpu(runtime_pid, args.duration)
    result = _loadgen.Result(key, label, args.duration, args.connections, args.timeout)
    _loadgen.request_loop(result, port, lambda _index: raw, rate=rate, server_pid=server_pid)
    share = runtime.share()
    result.extra["offered_rate"] = rate or None
    result.extra["runtime_cpu_percent"] = None if share is None else round(share * 100, 1)
    return result


def row_line(result: _loadgen.Result, width: int) -> str:
    cpu = result.extra.get("runtime_cpu_percent")
    return _loadgen.fmt_row(result.label, result, width) + (f" runtime {cpu:.0f}%" if cpu is not None else "")


def runtime_share(result: _loadgen.Result) -> float | None:
    percent = result.extra.get("runtime_cpu_percent")
    return None if percent is None else percent / 100


def overhead(cortex: _loadgen.Result, direct: _loadgen.Result, p: float = 50) -> float | None:
    """ms: percentile ``p`` through Cortex minus directly (None without figures or on a time-out)."""
    a, b = cortex.percentile(p), direct.percentile(p)
    if a is None or b is None or math.isinf(a) or math.isinf(b):
        return None
    return (a - b) * 1000


def cpu_per_call(result: _loadgen.Result, fraction: float | None) -> float | None:
    """ms of CPU per request completed in the window, from a process's share of one CPU (a fraction)."""
    return None if fraction is None or not result.ok else fraction * 1000 / result.rps


def spin_row(server, project_id: str, raw: bytes, args, runtime_pid: int) -> _loadgen.Result:
    """``trivial`` paced through Cortex while ``--spinners`` clients keep invoking ``spin`` (started 1 s before)."""
    import gevent
    spin_raw = _loadgen.build_request(f"/invoke/{project_id}/spin", accept="*/*")
    stop = {"now": False}
    spins = {"answers": {}, "latencies": [], "errors": {}}

    def spinner():
        connection = None
        while not stop["now"]:
            began = time.perf_counter()
            try:
                if connection is None:
                    connection = _loadgen.HttpConnection(server.port, SPIN_CLIENT_TIMEOUT)
                status, _body, keep = connection.request(spin_raw)
            except (OSError, ValueError) as exc:
                name = type(exc).__name__
                spins["errors"][name] = spins["errors"].get(name, 0) + 1
                _loadgen._close(connection)
                connection = None
                gevent.sleep(0.1)
                continue
            spins["answers"][status] = spins["answers"].get(status, 0) + 1
            spins["latencies"].append(time.perf_counter() - began)
            if not keep:
                connection.close()
                connection = None
        _loadgen._close(connection)

    spinners = [gevent.spawn(spinner) for _ in range(args.spinners)]
    try:
        gevent.sleep(1.0)  # every spinner's invocation is looping before the row starts
        label = f"trivial paced ({args.rate:g}/s) while {args.spinners} clients invoke spin"
        result = row("healthy_while_spinning", label, server.port, raw, args, rate=args.rate,
                     server_pid=server.pid, runtime_pid=runtime_pid)
    finally:
        stop["now"] = True
        gevent.joinall(spinners, timeout=SPIN_TIMEOUT_MS / 1000 + 10)
        gevent.killall(spinners, timeout=5)
    latencies = spins["latencies"]
    result.extra["achieved_of_offered"] = round(result.rps / args.rate, 3)
    result.extra["spin"] = {
        "clients": args.spinners, "answers": {str(k): v for k, v in sorted(spins["answers"].items())},
        "errors": spins["errors"],
        "p50_ms": None if not latencies else round(_loadgen.percentile(latencies, 50) * 1000, 1),
        "max_ms": None if not latencies else round(max(latencies) * 1000, 1),
    }
    return result


# ----------------------------------------------------------------- pinning the runtime


def runtime_cpus(choice: str, cpus: tuple) -> tuple[set[int] | None, str]:
    """The CPUs to move the runtime to (None: leave it on the server's, which it inherits) and a description."""
    machine = _all_cpus()
    if choice == "auto" and cpus[0] is not None:  # never the server's CPU: its core is its own, as in production
        spare = [cpu for cpu in machine if cpu not in cpus]
        if spare:
            return {spare[0]}, f"runtime pinned to CPU {spare[0]}"
        return {cpus[1]}, (f"runtime pinned to the load generator's CPU {cpus[1]} (no third CPU; the server's "
                           "stays its own)")
    if choice == "server" or cpus[0] is None:
        where = "the server's CPU" if cpus[0] is not None else "no CPU in particular (not pinned)"
        return None, f"runtime on {where}, inherited from the server process"
    if choice == "loadgen":
        return {cpus[1]}, f"runtime pinned to the load generator's CPU {cpus[1]}"
    if choice == "all":
        return set(machine), f"runtime on every CPU ({', '.join(map(str, machine))})"
    return {int(choice)}, f"runtime pinned to CPU {int(choice)}"


def _all_cpus() -> list[int]:
    """Every online CPU (this process's own affinity is narrowed to one by split_cpus)."""
    try:
        with open("/sys/devices/system/cpu/online") as file:
            spec = file.read().strip()
    except OSError:
        return sorted(os.sched_getaffinity(0))
    cpus = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        cpus += range(int(low), int(high or low) + 1)
    return cpus


def pin_runtime(pid: int, cpus: set[int] | None) -> None:
    """Every thread of the runtime process onto ``cpus`` (the workers it starts later inherit its main thread's)."""
    if cpus is None:
        return
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError as exc:
        raise _loadgen.BenchError(f"cannot pin the runtime (pid {pid}): {exc}") from None
    for task in tasks:
        try:
            os.sched_setaffinity(int(task), cpus)
        except OSError:  # a thread that just ended
            pass


# ----------------------------------------------------------------- the bench


def run_bench(args, workdir: str, cpus: tuple, pinning: str) -> tuple[int, dict]:
    wanted_cpus, runtime_pinning = runtime_cpus(args.runtime_cpu, cpus)
    meta = _loadgen.print_header(args, pinning, "Cortex functions benchmark (one server process)",
                                 rate=args.rate, publishes=args.publishes, spinners=args.spinners,
                                 redis=bool(args.redis_url), runtime_pinning=runtime_pinning)
    print(f"functions trivial (async, returns 'ok-N') and spin (loops forever, timeout {SPIN_TIMEOUT_MS} ms), "
          f"authMode public; {runtime_pinning}; redis {'on' if args.redis_url else 'off'}", flush=True)
    server = _loadgen.bench_server(args, os.path.abspath(__file__), workdir, cpus, ENV_PREFIX)
    rows, failures = [], []
    width = 58
    try:
        server.start()
        project_id = server.info["project"]
        api = Api(server)
        print(f"server    pid {server.pid} on {HOST}:{server.port}; project {project_id}", flush=True)
        activated = activate(api, project_id)
        handle = read_handle(workdir)
        versions = api.call("GET", f"/api/projects/{project_id}/functions/settings/runtime/versions")
        meta.update(activation_s=round(activated, 2), runtime_version=handle.get("version"),
                    runtime_versions=[v["version"] for v in versions["versions"]])
        print(f"runtime   activated in {activated:.1f} s: {handle.get('version')} (pid {handle['pid']}, port "
              f"{handle['port']}; this server's versions {', '.join(meta['runtime_versions'])})", flush=True)

        trivial = create_function(api, project_id, "trivial", TRIVIAL_CODE % "ok-0")
        spin = create_function(api, project_id, "spin", SPIN_CODE, timeout=SPIN_TIMEOUT_MS)
        publish(api, project_id, spin["id"], "bench")
        firsts = first_invokes(api, project_id, trivial["id"], args.publishes)
        meta["first_invoke_after_publish"] = firsts
        print("\nfirst invoke after publish (publish answered -> first 200 of the new version, polled back to back):")
        for item in firsts:
            shown = "none" if item["first_invoke_ms"] is None else f"{item['first_invoke_ms']:.1f} ms"
            print(f"  version {item['version']}: {shown:>9}   (publish request {item['publish_ms']:.1f} ms; "
                  f"{item['polls']} invokes, {item['stale']} answered by the previous version, other answers "
                  f"{item['errors'] or 'none'})")
        measured = [item["first_invoke_ms"] for item in firsts]
        worst = None if None in measured else max(measured)
        print(f"  max {'n/a' if worst is None else f'{worst:.1f} ms'} (first publish = first deployment: cold "
              "worker)", flush=True)

        handle = read_handle(workdir)
        pin_runtime(handle["pid"], wanted_cpus)
        cortex_raw = _loadgen.build_request(f"/invoke/{project_id}/trivial", accept="*/*")
        direct_raw = direct_request(handle, project_id, trivial["id"], firsts[-1]["version"] if firsts else 1)
        answer = check_answers(server, cortex_raw, handle, direct_raw)
        print(f"\nverified  GET /invoke/{project_id}/trivial -> 200 {answer!r}; the runtime's POST /invoke/trivial "
              f"-> outcome ok, the same body", flush=True)
        print("          (cpu: server = the Cortex process; in the direct rows it is the runtime's; runtime = the "
              "node process)\n")

        def pair(kind: str, rate: float) -> tuple[_loadgen.Result, _loadgen.Result]:
            how = f"paced {rate:g}/s" if rate else "unpaced"
            cortex = row(f"cortex_{kind}", f"through Cortex, {how}", server.port, cortex_raw, args, rate=rate,
                         server_pid=server.pid, runtime_pid=handle["pid"])
            rows.append(cortex)
            print(row_line(cortex, width), flush=True)
            direct = row(f"direct_{kind}", f"direct to the runtime, {how}", handle["port"], direct_raw, args,
                         rate=rate, server_pid=handle["pid"], runtime_pid=handle["pid"])
            rows.append(direct)
            print(row_line(direct, width), flush=True)
            extra = {"overhead_p50_ms": overhead(cortex, direct), "overhead_p99_ms": overhead(cortex, direct, 99),
                     "server_cpu_ms_per_invocation": cpu_per_call(cortex, cortex.server_cpu),
                     "runtime_cpu_ms_per_invocation": cpu_per_call(cortex, runtime_share(cortex))}
            cortex.extra.update({key: None if value is None else round(value, 3) for key, value in extra.items()})
            shown = {key: "n/a" if value is None else f"{value:.2f} ms" for key, value in extra.items()}
            print(f"  overhead of Cortex: p50 {shown['overhead_p50_ms']}, p99 {shown['overhead_p99_ms']}; CPU per "
                  f"invocation through Cortex: server {shown['server_cpu_ms_per_invocation']}, runtime "
                  f"{shown['runtime_cpu_ms_per_invocation']}", flush=True)
            return cortex, direct

        paced, _direct_paced = pair("paced", args.rate)
        saturated, _direct_saturated = pair("unpaced", 0.0)

        spinning = spin_row(server, project_id, cortex_raw, args, handle["pid"])
        rows.append(spinning)
        print(row_line(spinning, width))
        info = spinning.extra["spin"]
        print(f"  trivial: {spinning.rps:.0f}/s of the {args.rate:g}/s offered; spin: {info['clients']} clients, "
              f"answers {info['answers']} (p50 {info['p50_ms']} ms, max {info['max_ms']} ms)"
              f"{'; errors ' + str(info['errors']) if info['errors'] else ''}", flush=True)

        after = read_handle(workdir, limit=0.0)
        meta["runtime_restarted"] = after["pid"] != handle["pid"]
        if meta["runtime_restarted"]:
            print(f"  WARNING: the runtime was restarted during the run (pid {handle['pid']} -> {after['pid']})")

        if worst is None or worst >= TARGET_FIRST_INVOKE_MS:
            failures.append(f"first invoke after publish: max {'n/a' if worst is None else f'{worst:.0f} ms'} "
                            f"(target < {TARGET_FIRST_INVOKE_MS:g} ms)")
        for result in (paced, saturated):
            if result.errors:
                failures.append(f"{result.label}: errors {dict(result.errors)}")
        if saturated.rps < TARGET_RATE:
            failures.append(f"{saturated.rps:.0f} invocations/s through Cortex unpaced (target >= {TARGET_RATE:g})")
        paced_overhead = paced.extra.get("overhead_p50_ms")
        if paced_overhead is None or paced_overhead >= TARGET_OVERHEAD_MS:
            failures.append(f"paced p50 overhead {'n/a' if paced_overhead is None else f'{paced_overhead:.2f} ms'} "
                            f"(target < {TARGET_OVERHEAD_MS:g} ms)")
        if spinning.errors:
            failures.append(f"trivial while spin loops: errors {dict(spinning.errors)}")
        if args.calibrate:
            _loadgen.calibrate(server, args, meta)
    finally:
        server.stop()
    return _loadgen.verdict("functions", meta, rows, failures,
                            f">= {TARGET_RATE:g} invocations/s through Cortex, paced p50 overhead < "
                            f"{TARGET_OVERHEAD_MS:g} ms, first invoke after publish < {TARGET_FIRST_INVOKE_MS:g} ms, "
                            "no error for a healthy function while another loops")


def build_parser() -> argparse.ArgumentParser:
    parser = _loadgen.bench_parser("Functions benchmark of one Cortex server process: invocations through Cortex "
                                   "and directly to the runtime (stdlib + gevent load generator).")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per row (after 1 s warm-up)")
    parser.add_argument("--connections", type=int, default=20, help="keep-alive connections per row")
    parser.add_argument("--rate", type=float, default=200.0, help="invocations/s offered in the paced rows")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-request timeout in seconds")
    parser.add_argument("--publishes", type=int, default=5, help="publishes of trivial timed to their first invoke")
    parser.add_argument("--spinners", type=int, default=4, help="clients invoking spin during the last row")
    parser.add_argument("--runtime-cpu", default="auto",
                        help="where the runtime (node) runs: auto, server, loadgen, all or a CPU number")
    _loadgen.add_server_options(parser, redis_help="REDIS_URL of the server",
                                engines_help="not supported: the functions supervisor must run")
    return parser


def invalid_options(args) -> str | None:
    if args.no_engines:
        return "--no-engines: the functions supervisor (an engine) runs the runtime this bench measures"
    if args.duration <= 0 or args.rate <= 0 or args.connections < 1 or args.publishes < 1 or args.spinners < 0:
        return "--duration and --rate must be > 0, --connections and --publishes >= 1, --spinners >= 0"
    if args.runtime_cpu not in ("auto", "server", "loadgen", "all") and not args.runtime_cpu.isdigit():
        return "--runtime-cpu: auto, server, loadgen, all or a CPU number"
    return None


def main(argv=None) -> int:
    return _loadgen.bench_main(build_parser(), argv, serve=serve, body=run_bench, prefix="cortex-bench-functions-",
                               invalid=invalid_options,
                               sockets=lambda args: args.connections + args.spinners + 64)


if __name__ == "__main__":
    sys.exit(main())
