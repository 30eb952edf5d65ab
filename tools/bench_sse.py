#!/usr/bin/env python3
"""Benchmark the event streams of one Cortex server process: publish→receive latency across N subscribers,
server memory per idle subscriber, and ``GET /api`` latency meanwhile; optionally flask-sse's stock blueprint.

One run per stack, each against a fresh server subprocess (this file with ``--serve``) that calls
``cortex.http.serve.patch()`` first, builds the app with ``create_app``, seeds one user and project, and serves
through ``cortex.cli.serve_with_engines`` (the code path of ``cortex serve``: live dispatcher, LiveFanout,
retention, gevent WSGIServer):

  cortex            ``GET /api/events/stream?types=participant.*`` (bearer), the in-process fan-out
  cortex+redis      the same with ``--redis-url``: the dispatcher publishes through flask-sse's ``publish`` to
                    Redis, the process's ONE Redis subscription feeds every local stream
  flask-sse         flask-sse's stock blueprint (``flask_sse.sse`` at ``/bench/flask-sse?channel=cortex:events``,
                    a bench-only route without authentication or filters): every client gets its own Redis
                    connection and pub/sub subscription, every message is decoded and rendered per client.
                    Needs ``--redis-url``.

Subscribers are raw sockets in ``--clients`` client processes (this file with ``--client``; gevent, no
monkey-patching), each reading its share of the streams and noting when each event marker first arrives on
each socket. Events are published through the API: the parent creates participants (``POST …/participants``,
externalUserId ``bench-m000042``) at ``--rate`` per second; the latency of an event on a subscriber is the time
from sending that POST to its marker arriving (one clock: CLOCK_MONOTONIC is system-wide). Meanwhile
``--api-connections`` greenlets send ``GET /api`` at ``--api-rate`` per second in all. Server RSS is read from
/proc/<pid>/status before the subscribers connect and after they are all receiving. With 2+ CPUs the server is
pinned to one CPU and everything else (parent, clients) to another.

``--idle N`` measures something else: N idle streams on one serving process while ``GET /api`` must keep p99
under 100 ms. One server (stack ``cortex``; ``cortex+redis`` when ``--redis-url`` is given), N authenticated
``GET /api/events/stream`` held by ``--clients`` client processes; every process raises its own open-file limit
(RLIMIT_NOFILE) to the hard limit, and the run stops with exit status 2 when the hard limit is too low for N.
Cortex's defaults refuse 10,000 streams on one process in two places, and the bench does what an operator
would do: the per-principal cap (``CORTEX_SSE_MAX_STREAMS_PER_PRINCIPAL``, 100) stays, the streams are spread
over API keys created through the API (``POST /api/api-keys``, scope ``events:read``, at most the cap each — many
clients are many principals); the connection bound of one process (``CORTEX_MAX_CONNECTIONS``, 1,000) is raised
to N + 1,000 for the bench server. Everything else keeps its default (client timeout 60 s, stream life
``CORTEX_SSE_MAX_SECONDS`` 300 s: the measured phase must end before the first stream's life does). Once every
stream has its first bytes (``retry:``), ``GET /api`` is probed at ``--api-rate`` per second over
``--api-connections`` keep-alive connections for ``--duration`` seconds (at least one 15 s heartbeat period),
and ``--idle-events`` events are published meanwhile: each must reach each stream exactly once. The streams are
opened ``--connect-concurrency`` at a time (a request counts until its answer's headers are in): 400 at once
is a reconnect storm after a restart. Printed: streams open / requested, connect time and the server's CPU per
stream, server RSS and open fds before/after (per stream), ``GET /api`` p50/p99/max and errors — measured from
each request's sending, and from its slot in the schedule (a request due while the server stalled waits for its
connection's late answer first: what a client sending at a steady rate sees) —, deliveries, heartbeats seen,
server CPU, load average; and, from the server (``--watch-stalls``), its garbage collections of 5 ms or more and
event-loop lags of 20 ms or more, lined up with the slow requests. PASS when every stream opened, every event
reached every stream once, no request failed and both p99 are under 100 ms; exit status 1 on FAIL.

Everything talks to 127.0.0.1 only, every wait is bounded, subprocesses and temporary directories are removed
on exit and on Ctrl-C; with ``--database-url`` the seeded tenant, its API keys and its events are deleted again.

Usage:
    tools/bench_sse.py [--subscribers 1000] [--clients 4] [--events 100] [--rate 5]
                       [--redis-url redis://127.0.0.1:6379/0] [--stacks cortex,cortex+redis,flask-sse]
                       [--database-url postgresql://…] [--json]
    tools/bench_sse.py --idle 10000 [--clients 4] [--connect-concurrency 400] [--duration 30] [--idle-events 3]
                       [--api-rate 100] [--api-connections 4] [--redis-url redis://…] [--database-url postgresql://…]
                       [--json]
"""

from __future__ import annotations

# Only modules that do not pull in socket/threading/ssl are imported here: the same file is the server
# subprocess, which must run cortex.http.serve.patch() before anything else imports them.
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
MARKER = rb"bench-m(\d{6})"
STOCK_PATH = "/bench/flask-sse"
READY_TIMEOUT = 120.0
GRACE = 3.0  # seconds after the last publish before the receipts are collected
TARGET_P99 = 0.250
TARGET_API_P99 = 0.100


# ----------------------------------------------------------------- helpers for every process


# raise_fd_limit / pin_to_cpu: bench_http's (it imports nothing that gevent must patch first).
from bench_http import pin_to_cpu, raise_fd_limit  # noqa: E402

# ----------------------------------------------------------------- server subprocess


def serve(args) -> int:
    """Seed, print {"port", "token", "pid", "project"}, then serve like `cortex serve` until SIGINT."""
    pin_to_cpu(args.cpu)
    fd_limit = raise_fd_limit()
    from cortex.http.serve import patch

    patch()  # first: before anything imports socket, threading or ssl

    import secrets
    import socket
    import threading
    import time

    from cortex.cli import serve_with_engines
    from cortex.http import security
    from cortex.http.app import create_app
    from cortex.settings import Settings
    from models.base import db
    from models.database import upgrade
    from models.events import DomainEvent
    from models.identity import ApiKey, Project, Tenant, User, create_project, create_user

    os.makedirs(args.data_dir, exist_ok=True)
    env = {"CORTEX_LOG_LEVEL": "WARNING"}  # not os.environ
    if args.setting is None:
        # Every subscriber is the same user, and thousands of them are the point: the per-principal stream cap
        # and the connection bound of `cortex serve` are raised for this bench.
        env.update({"CORTEX_SSE_MAX_SECONDS": "3600", "CORTEX_MAX_CONNECTIONS": "100000",
                    "CORTEX_SSE_MAX_STREAMS_PER_PRINCIPAL": "100000"})
    else:  # --idle: exactly the settings the parent names (it prints them), the defaults otherwise
        env.update(item.split("=", 1) for item in args.setting)
    settings = Settings.from_env(
        env=env,
        data_dir=args.data_dir,
        database_url=args.database_url or None,
        secret_key=secrets.token_urlsafe(48),
        redis_url=args.redis_url or None,
    )
    app = create_app(settings)
    upgrade()
    with db.connection_context():
        user = create_user(f"bench-{secrets.token_hex(6)}@bench.invalid", secrets.token_urlsafe(16), "Bench User")
        project, _secret = create_project(user, "Bench Project")
    token = security.issue_access_token(user.id, user.tenant_id)
    if args.stock:
        import flask_sse

        app.config["REDIS_URL"] = args.redis_url
        app.register_blueprint(flask_sse.sse, url_prefix=STOCK_PATH)

    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    parent = os.getppid()

    def watch_parent():  # a greenlet (patched threading): stop when the benchmark is gone
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), 2)

    threading.Thread(target=watch_parent, daemon=True).start()
    if args.watch_stalls:
        watch_stalls()
    from cortex.events.sse import HEARTBEAT_SECONDS

    effective = {name: getattr(settings, name) for name in (
        "max_connections", "sse_max_streams_per_principal", "max_api_keys_per_user", "client_timeout",
        "sse_max_seconds")}
    print(json.dumps({"port": port, "token": token, "pid": os.getpid(), "project": project.id, "fd_limit": fd_limit,
                      "settings": effective, "heartbeat_seconds": HEARTBEAT_SECONDS}), flush=True)
    try:
        serve_with_engines(app, HOST, port)  # returns on SIGINT (KeyboardInterrupt), engines stopped
    finally:
        if args.database_url:  # leave a shared database as we found it
            try:
                with db.connection_context():
                    DomainEvent.delete().where(DomainEvent.tenant_id == user.tenant_id).execute()
                    ApiKey.delete().where(ApiKey.tenant == user.tenant_id).execute()  # --idle creates some
                    User.delete().where(User.id == user.id).execute()
                    Project.delete().where(Project.tenant == user.tenant_id).execute()
                    Tenant.delete().where(Tenant.id == user.tenant_id).execute()
            except Exception as exc:  # best effort on the way out
                print(f"bench: could not remove the seeded tenant {user.tenant_id}: {exc}", file=sys.stderr)
    return 0


STALL_GC_MS = 5.0  # garbage collections at least this long are logged by a --watch-stalls server
STALL_LAG_MS = 20.0  # … and event-loop lags at least this long (a 10 ms sleep that took this much longer)


def watch_stalls() -> None:
    """In the server: log (stderr, one JSON line each, CLOCK_MONOTONIC) garbage collections of at least
    STALL_GC_MS and moments the gevent loop ran at least STALL_LAG_MS late, for the parent to line up with slow
    ``GET /api`` requests."""
    import gc
    import time

    import gevent

    started = [0.0, 0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[:] = time.monotonic(), time.thread_time()
            return
        took = (time.monotonic() - started[0]) * 1000
        if took >= STALL_GC_MS:  # wall time, and the CPU time of the collection (less when the CPU was taken)
            print(json.dumps({"bench": "gc", "at": started[0], "ms": round(took, 1), "generation": info["generation"],
                              "cpu_ms": round((time.thread_time() - started[1]) * 1000, 1),
                              "collected": info["collected"]}), file=sys.stderr, flush=True)

    gc.callbacks.append(on_gc)

    def lag_monitor() -> None:
        while True:
            before = time.monotonic()
            gevent.sleep(0.01)
            late = (time.monotonic() - before - 0.01) * 1000
            if late >= STALL_LAG_MS:
                print(json.dumps({"bench": "lag", "at": before, "ms": round(late, 1)}), file=sys.stderr, flush=True)

    gevent.spawn(lag_monitor)


def stalls_in(log_path: str, begin: float, end: float) -> list[dict]:
    """The --watch-stalls lines of a server log between two CLOCK_MONOTONIC times."""
    found = []
    with open(log_path, "rb") as handle:
        for line in handle:
            if line.startswith(b'{"bench": '):
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if begin <= item["at"] <= end:
                    found.append(item)
    return found


# ----------------------------------------------------------------- client subprocess


def client(args) -> int:
    """Hold ``--count`` streams; answer "status", "mark" and "stop" lines on stdin with one JSON line each.

    The body is split into SSE frames (at the blank line): a frame naming ``bench-m000042`` is a delivery of
    event 42 (its first arrival per stream is timed, a second one counts as a duplicate), ``: heartbeat`` a
    heartbeat. "mark" starts counting heartbeats afresh (per stream, and per 100 ms of arrival).
    With ``--keys-file`` (a JSON list of API keys) stream i authenticates with key (offset + i) mod len(keys).
    """
    pin_to_cpu(args.cpu)
    raise_fd_limit()
    import re
    import time
    from collections import Counter, defaultdict

    import gevent
    from gevent import select as gselect
    from gevent import socket as gsocket
    from gevent.lock import BoundedSemaphore

    pattern = re.compile(MARKER)
    lines = [f"GET {args.path} HTTP/1.1", f"Host: {HOST}", "Accept: text/event-stream", "User-Agent: cortex-bench-sse"]
    if args.token:
        lines.append(f"Authorization: Bearer {args.token}")
    keys: list[str] = []
    if args.keys_file:
        with open(args.keys_file) as handle:
            keys = json.load(handle)

    def request_bytes(index: int) -> bytes:
        extra = [f"X-API-Key: {keys[(args.offset + index) % len(keys)]}"] if keys else []
        return ("\r\n".join(lines + extra) + "\r\n\r\n").encode()

    gate = BoundedSemaphore(args.gate)  # connections being opened at once
    times: dict[int, list[float]] = defaultdict(list)
    state = Counter()
    sockets = []
    beats = [0] * args.count  # heartbeats per stream
    marked = [0] * args.count  # … at the last "mark"
    beat_slots: Counter = Counter()  # heartbeats per 100 ms (CLOCK_MONOTONIC) since the last "mark"
    marking = [False]

    def read(index: int) -> None:
        try:
            with gate:  # "being opened": until the answer's headers are in
                sock = gsocket.create_connection((HOST, args.port), timeout=None)
                sockets.append(sock)
                sock.sendall(request_bytes(index))
                buf = b""
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        state["closed before headers"] += 1
                        return
                    buf += data
            head, _, data = buf.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if status != 200:
                state[f"HTTP {status}"] += 1
                sock.close()
                return
            seen: set[int] = set()
            pending = b""  # the incomplete frame (chunked-encoding lines stay in the frames: harmless)
            ready = False
            while True:
                if data:
                    if not ready:
                        ready = True
                        state["ready"] += 1
                    now = time.clock_gettime(time.CLOCK_MONOTONIC)
                    pending += data
                    if b"\n\n" in pending:
                        *frames, pending = pending.split(b"\n\n")
                        for frame in frames:
                            if b"bench-m" in frame:
                                for number in {int(found) for found in pattern.findall(frame)}:
                                    if number in seen:
                                        state["duplicate deliveries"] += 1
                                    else:
                                        seen.add(number)
                                        times[number].append(now)
                            elif b": heartbeat" in frame:
                                beats[index] += 1
                                if marking[0]:
                                    beat_slots[int(now * 10)] += 1
                data = sock.recv(65536)
                if not data:
                    state["closed by server"] += 1
                    return
        except Exception as exc:  # counted and reported
            state[type(exc).__name__] += 1

    def beating() -> int:
        return sum(1 for now, then in zip(beats, marked, strict=True) if now > then)

    import gc

    gc.disable()  # the client is an instrument: its GC pauses must not show up as the server's latency
    greenlets = [gevent.spawn(read, i) for i in range(args.count)]
    stdin = sys.stdin.fileno()
    pending = b""
    while True:
        readable, _, _ = gselect.select([stdin], [], [], 0.2)
        if not readable:
            continue
        chunk = os.read(stdin, 4096)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            command, pending = pending.split(b"\n", 1)
            if command == b"status":
                print(json.dumps({"ready": state["ready"], "state": dict(state), "beats": sum(beats),
                                  "beating": beating()}), flush=True)
            elif command == b"mark":
                marked[:] = beats
                beat_slots.clear()
                marking[0] = True
                print(json.dumps({"marked": True}), flush=True)
            elif command == b"stop":
                report = {"ready": state["ready"], "state": dict(state), "times": times, "beats": sum(beats),
                          "beating": beating(), "beat_slots": beat_slots}
                print(json.dumps(report), flush=True)
                gevent.killall(greenlets, timeout=5)
                for sock in sockets:
                    sock.close()
                return 0
    return 0


# ----------------------------------------------------------------- the benchmark (parent)


def run(args) -> int:
    import gevent

    hub = gevent.get_hub()
    hub.NOT_ERROR = (*hub.NOT_ERROR, KeyboardInterrupt)
    import signal

    def on_sigterm(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    limit = raise_fd_limit()
    if limit < args.subscribers // args.clients + 256:
        print(f"bench: open-file limit {limit} is too low", file=sys.stderr)
        return 2
    stacks = [name.strip() for name in (args.stacks or "cortex,cortex+redis,flask-sse").split(",") if name.strip()]
    for name in stacks:
        if name not in ("cortex", "cortex+redis", "flask-sse"):
            print(f"bench: unknown stack {name!r}", file=sys.stderr)
            return 2
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cpus = (allowed[0], allowed[1]) if len(allowed) >= 2 else (None, None)
    if cpus[1] is not None:
        os.sched_setaffinity(0, {cpus[1]})
    pinning = (
        f"server on CPU {cpus[0]}; parent (publisher, GET /api prober) and {args.clients} client processes on CPU "
        f"{cpus[1]}" if cpus[0] is not None else "not pinned (fewer than 2 CPUs)"
    )
    import platform
    import tempfile
    from datetime import datetime

    print(f"Cortex SSE benchmark  {datetime.now().astimezone():%Y-%m-%d %H:%M:%S %z}")
    print(f"python    {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs; {pinning}")
    print(f"database  {args.database_url or 'sqlite (temporary file)'}; redis {args.redis_url or 'none'}")
    print(
        f"load      {args.subscribers} subscribers in {args.clients} client processes; {args.events} events at "
        f"{args.rate:g}/s (POST …/participants); GET /api at {args.api_rate:g}/s over {args.api_connections} "
        f"connections meanwhile",
        flush=True,
    )
    results = []
    workdir = tempfile.mkdtemp(prefix="cortex-bench-sse-")
    try:
        for stack in stacks:
            if stack != "cortex" and not args.redis_url:
                print(f"\n[{stack}] skipped: needs --redis-url")
                continue
            results.append(run_stack(args, stack, workdir, cpus))
    except KeyboardInterrupt:
        print("bench: interrupted; processes stopped", file=sys.stderr)
        return 130
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(summary_table(results))
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


class Proc:
    """A subprocess of this script in its own session (stopped with SIGINT, then SIGKILL)."""

    def __init__(self, argv: list[str], log_path: str | None = None, stdin: bool = False):
        import subprocess

        self.log = open(log_path, "wb") if log_path else None  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *argv],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log if self.log else None,
            cwd=ROOT,
            start_new_session=True,
        )
        self.buffer = b""

    def line(self, timeout: float) -> dict:
        """The next JSON line of its stdout (blocking, bounded)."""
        import select
        import time

        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError("no answer from a subprocess in time")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                data = os.read(fd, 1 << 20)
                if not data:
                    raise RuntimeError(f"subprocess exited with {self.process.wait(5)}")
                self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def send(self, text: str) -> None:
        self.process.stdin.write(text.encode() + b"\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        import signal
        import subprocess

        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGINT)
                self.process.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                self.process.kill()
                self.process.wait(timeout=10)
        for stream in (self.process.stdout, self.process.stdin):
            if stream:
                stream.close()
        if self.log:
            self.log.close()


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_clients_now(url: str) -> int:
    """How many clients the Redis server has connected right now."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return client.info("clients")["connected_clients"] - 1  # not counting this one
    finally:
        client.close()


def cpu_busy(cpu: int | None) -> tuple[int, int]:
    """(busy, total) jiffies of one CPU (all CPUs when None), from /proc/stat."""
    name = "cpu" if cpu is None else f"cpu{cpu}"
    with open("/proc/stat") as handle:
        for line in handle:
            fields = line.split()
            if fields[0] == name:
                values = [int(v) for v in fields[1:]]
                idle = values[3] + values[4]  # idle + iowait
                return sum(values) - idle, sum(values)
    return 0, 1


def post_participant(port: int, token: str, project: str, name: str):
    """The bytes of one keep-alive POST creating a participant."""
    body = json.dumps({"externalUserId": name}).encode()
    head = (
        f"POST /api/projects/{project}/participants HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def probe_api(port: int, rate: float, connections: int, seconds: float, samples: list | None = None) -> dict:
    """GET /api at ``rate`` per second over ``connections`` keep-alive connections for ``seconds``; ``samples``
    (if given) gets (due at, sent at, latency or None for an error) per request, on CLOCK_MONOTONIC: a request is
    due at its slot of the schedule and sent when its connection is free, later if the previous answer was late."""
    import time

    import gevent
    from _loadgen import HttpConnection, build_request, percentile

    raw = build_request("/api")
    latencies: list[float] = []
    errors = [0]
    interval = connections / rate
    end = time.monotonic() + seconds

    def worker(offset: float) -> None:
        connection = None
        tick = time.monotonic() + offset
        while tick < end:
            gevent.sleep(max(0.0, tick - time.monotonic()))
            began = time.monotonic()
            try:
                connection = connection or HttpConnection(port, 5.0)
                status, _body, keep = connection.request(raw)
                if status != 200:
                    errors[0] += 1
                latencies.append(time.monotonic() - began)
                if samples is not None:
                    samples.append((tick, began, latencies[-1] if status == 200 else None))
                if not keep:
                    connection.close()
                    connection = None
            except Exception:
                errors[0] += 1
                if samples is not None:
                    samples.append((tick, began, None))
                if connection:
                    connection.close()
                connection = None
            tick += interval
        if connection:
            connection.close()

    gevent.joinall([gevent.spawn(worker, i * interval / connections) for i in range(connections)],
                   timeout=seconds + 10)
    return {
        "requests": len(latencies),
        "errors": errors[0],
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "max_ms": ms(max(latencies) if latencies else None),
    }


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def run_stack(args, stack: str, workdir: str, cpus) -> dict:
    """One server, N subscribers, warm-up, RSS, the measured publish phase; the figures of one stack."""
    import time

    import gevent
    from _loadgen import HttpConnection, build_request, percentile

    print(f"\n[{stack}]", flush=True)
    data_dir = os.path.join(workdir, stack.replace("+", "-"))
    argv = ["--serve", "--data-dir", data_dir]
    if cpus[0] is not None:
        argv += ["--cpu", str(cpus[0])]
    if args.database_url:
        argv += ["--database-url", args.database_url]
    if stack != "cortex":
        argv += ["--redis-url", args.redis_url]
    if stack == "flask-sse":
        argv += ["--stock"]
    server = Proc(argv, log_path=os.path.join(workdir, f"{stack}.log"))
    clients: list[Proc] = []
    try:
        info = server.line(90)
        port, token, project, pid = info["port"], info["token"], info["project"], info["pid"]
        deadline = time.monotonic() + 60
        while True:
            try:
                connection = HttpConnection(port, 2.0)
                status, _, _ = connection.request(build_request("/api"))
                connection.close()
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not answering; see {workdir}/{stack}.log")
            gevent.sleep(0.1)

        publisher = HttpConnection(port, 10.0)
        counter = iter(range(1, 10**6))

        def publish(prefix: str) -> float:
            number = next(counter)
            started = time.clock_gettime(time.CLOCK_MONOTONIC)
            status, body, _ = publisher.request(post_participant(port, token, project, f"{prefix}{number:06d}"))
            if status != 201:
                raise RuntimeError(f"POST participant answered {status}: {body[:200]!r}")
            return started

        publish("bench-x")  # warm the write path
        idle_api = probe_api(port, args.api_rate, args.api_connections, 3.0)
        rss_before = vm_rss_kib(pid)
        redis_before = redis_clients_now(args.redis_url) if stack != "cortex" else None

        path = "/api/events/stream?types=participant.*" if stack != "flask-sse" else f"{STOCK_PATH}?channel=cortex:events"
        shares = [args.subscribers // args.clients + (i < args.subscribers % args.clients) for i in range(args.clients)]
        opened = time.monotonic()
        for number, share in enumerate(shares):
            client_argv = ["--client", "--port", str(port), "--path", path, "--count", str(share)]
            if stack != "flask-sse":
                client_argv += ["--token", token]
            if cpus[1] is not None:
                client_argv += ["--cpu", str(cpus[1])]
            clients.append(Proc(client_argv, log_path=os.path.join(workdir, f"{stack}-client{number}.log"), stdin=True))
        ready = 0
        warmups = 0
        while ready < args.subscribers:  # a stock flask-sse stream shows nothing before its first message
            if time.monotonic() - opened > READY_TIMEOUT:
                raise RuntimeError(f"only {ready}/{args.subscribers} subscribers ready after {READY_TIMEOUT:g} s")
            publish("bench-w")
            warmups += 1
            gevent.sleep(0.5)
            ready = 0
            for proc in clients:
                proc.send("status")
                ready += proc.line(10)["ready"]
        connect_seconds = time.monotonic() - opened
        gevent.sleep(2)
        rss_after = vm_rss_kib(pid)
        redis_clients = None  # Redis connections the subscribers added (others may share that Redis server)
        if redis_before is not None:
            redis_clients = redis_clients_now(args.redis_url) - redis_before
        print(
            f"  {ready} subscribers receiving after {connect_seconds:.1f} s ({warmups} warm-up events); server RSS "
            f"{rss_before / 1024:.1f} → {rss_after / 1024:.1f} MiB"
            + (f"; Redis connections added {redis_clients}" if redis_clients is not None else ""),
            flush=True,
        )

        sent: dict[int, float] = {}
        answered: dict[int, float] = {}  # when the POST's 201 came back: the event is committed
        post_latencies: list[float] = []

        def publisher_loop() -> None:
            interval = 1.0 / args.rate
            tick = time.monotonic()
            for number in range(1, args.events + 1):
                gevent.sleep(max(0.0, tick - time.monotonic()))
                started = time.clock_gettime(time.CLOCK_MONOTONIC)
                status, body, _ = publisher.request(post_participant(port, token, project, f"bench-m{number:06d}"))
                done = time.clock_gettime(time.CLOCK_MONOTONIC)
                post_latencies.append(done - started)
                if status != 201:
                    raise RuntimeError(f"POST participant answered {status}: {body[:200]!r}")
                sent[number], answered[number] = started, done
                tick += interval

        phase = args.events / args.rate
        import gc

        gc.disable()  # nor the publisher's (re-enabled below)
        cpu0, wall0, core0 = cpu_seconds(pid), time.monotonic(), cpu_busy(cpus[0])
        load = os.getloadavg()[0]
        prober = gevent.spawn(probe_api, port, args.api_rate, args.api_connections, phase + 1)
        publishing = gevent.spawn(publisher_loop)
        publishing.join(timeout=phase + 60)
        if not publishing.successful():
            raise RuntimeError(f"publishing failed: {publishing.exception}")
        busy_api = prober.get(timeout=phase + 30)
        server_cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0)
        core1 = cpu_busy(cpus[0])
        core_busy = (core1[0] - core0[0]) / max(1, core1[1] - core0[1])
        # what other processes took of the server's CPU meanwhile (the machine may be shared): the server's own
        # share is subtracted; without pinning this is the whole machine's load beyond the server
        others = max(0.0, core_busy - server_cpu) if cpus[0] is not None else max(0.0, core_busy * (os.cpu_count() or 1) - server_cpu)
        gc.enable()
        gevent.sleep(GRACE)

        latencies: list[float] = []
        from_commit: list[float] = []
        per_event: dict[int, list[float]] = {}
        received = 0
        state: dict = {}
        for proc in clients:
            proc.send("stop")
            report = proc.line(60)
            for key, value in report["state"].items():
                state[key] = state.get(key, 0) + value
            for number, arrivals in report["times"].items():
                number = int(number)
                if number in sent:
                    received += len(arrivals)
                    latencies += [arrival - sent[number] for arrival in arrivals]
                    from_commit += [arrival - answered[number] for arrival in arrivals]
                    per_event.setdefault(number, []).extend(arrival - sent[number] for arrival in arrivals)
        expected = len(sent) * ready
        result = {
            "stack": stack,
            "subscribers": args.subscribers,
            "ready": ready,
            "events": len(sent),
            "deliveries": received,
            "expected_deliveries": expected,
            "latency_p50_ms": ms(percentile(latencies, 50)),
            "latency_p99_ms": ms(percentile(latencies, 99)),
            "latency_max_ms": ms(max(latencies) if latencies else None),
            # from the POST's answer (the event committed): the streaming pipeline without the write itself
            "from_commit_p50_ms": ms(percentile(from_commit, 50)),
            "from_commit_p99_ms": ms(percentile(from_commit, 99)),
            "post_p50_ms": ms(percentile(post_latencies, 50)),
            "post_p99_ms": ms(percentile(post_latencies, 99)),
            # per event: when its first subscriber had it (the pipeline), and how long until the last (fan-out)
            "first_delivery_p50_ms": ms(percentile([min(v) for v in per_event.values()], 50)),
            "first_delivery_p99_ms": ms(percentile([min(v) for v in per_event.values()], 99)),
            "spread_p50_ms": ms(percentile([max(v) - min(v) for v in per_event.values()], 50)),
            "spread_p99_ms": ms(percentile([max(v) - min(v) for v in per_event.values()], 99)),
            "rss_before_mib": round(rss_before / 1024, 1),
            "rss_after_mib": round(rss_after / 1024, 1),
            "rss_per_subscriber_kib": round((rss_after - rss_before) / max(ready, 1), 1),
            "redis_connected_clients": redis_clients,
            "server_cpu_percent": round(server_cpu * 100),
            "others_on_server_cpu_percent": round(others * 100),
            "load_average_at_start": round(load, 2),
            "api_idle": idle_api,
            "api_during": busy_api,
            "client_state": state,
        }
        print(
            f"  latency publish→receive p50 {result['latency_p50_ms']} ms, p99 {result['latency_p99_ms']} ms, max "
            f"{result['latency_max_ms']} ms; from the write's answer (committed) p50 {result['from_commit_p50_ms']} / p99 "
            f"{result['from_commit_p99_ms']} ms\n  {received}/{expected} deliveries; server CPU {result['server_cpu_percent']}%"
            f" during publishing, other processes took {result['others_on_server_cpu_percent']}% of the server's CPU "
            f"(load average {load:.2f} at the start)"
            f"\n  GET /api idle p99 {idle_api['p99_ms']} ms; during fan-out p50 {busy_api['p50_ms']} "
            f"ms, p99 {busy_api['p99_ms']} ms ({busy_api['requests']} requests, {busy_api['errors']} errors)\n"
            f"  per event: first subscriber after p50 {result['first_delivery_p50_ms']} / p99 "
            f"{result['first_delivery_p99_ms']} ms (POST p50 {result['post_p50_ms']} / p99 {result['post_p99_ms']} ms), last one "
            f"{result['spread_p50_ms']} / {result['spread_p99_ms']} ms later\n"
            f"  RSS per idle subscriber {result['rss_per_subscriber_kib']} KiB; client states {state}",
            flush=True,
        )
        return result
    except Exception:
        print_server_log(os.path.join(workdir, f"{stack}.log"), stack, server)
        raise
    finally:
        for proc in clients:
            proc.stop()
        server.stop()


def print_server_log(path: str, stack: str, server) -> None:
    """The tail of a failed run's server log, on stderr."""
    from _loadgen import log_file_tail

    print(log_file_tail(path, f"{stack} server log", 4000, server.log), file=sys.stderr)


def summary_table(results: list[dict]) -> str:
    rows = [
        "| stack | subscribers | publish→receive p50 / p99 | from commit p50 / p99 | deliveries | RSS per idle subscriber "
        "| Redis connections | GET /api p99 (idle → during) | server CPU (others on it) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        ok = "✓" if (r["latency_p99_ms"] or 1e9) < TARGET_P99 * 1000 else "✗"
        api_ok = "✓" if (r["api_during"]["p99_ms"] or 1e9) < TARGET_API_P99 * 1000 else "✗"
        rows.append(
            f"| {r['stack']} | {r['ready']}/{r['subscribers']} | {r['latency_p50_ms']} / {r['latency_p99_ms']} ms {ok} "
            f"| {r['from_commit_p50_ms']} / {r['from_commit_p99_ms']} ms "
            f"| {r['deliveries']}/{r['expected_deliveries']} | {r['rss_per_subscriber_kib']} KiB "
            f"| {r['redis_connected_clients'] if r['redis_connected_clients'] is not None else '–'} "
            f"| {r['api_idle']['p99_ms']} → {r['api_during']['p99_ms']} ms {api_ok} | {r['server_cpu_percent']}% "
            f"({r['others_on_server_cpu_percent']}%) |"
        )
    return "\n".join(rows)


# ----------------------------------------------------------------- --idle N: idle streams, API responsiveness

IDLE_SERVER_FDS = 512  # open files the server needs beside the streams (listener, database, probes, logs…)
IDLE_CLIENT_FDS = 128
IDLE_GRACE = 3.0  # seconds after the phase before the deliveries are collected
EVENT_WINDOW = 1.0  # a GET /api sent within this many seconds after a publish counts as "near an event"


def idle_plan(count: int, clients: int) -> dict:
    """What the server must allow for ``count`` streams with Cortex's defaults, and how the bench gets there."""
    from cortex.settings import Settings

    defaults = {name: field.default for name, field in Settings.__dataclass_fields__.items()}
    cap, max_keys = defaults["sse_max_streams_per_principal"], defaults["max_api_keys_per_user"]
    settings: dict[str, str] = {}
    keys = -(-count // cap)
    notes = []
    if keys <= max_keys:
        notes.append(
            f"CORTEX_SSE_MAX_STREAMS_PER_PRINCIPAL kept at its default {cap}: the {count} streams are spread over "
            f"{keys} API keys created with POST /api/api-keys (scope events:read, ≤ {cap} streams each), as "
            f"{count} real clients would be many principals")
    else:  # more keys than one user may hold: raise the cap instead, as an operator would
        per_key = -(-count // max_keys)
        keys = max_keys
        settings["CORTEX_SSE_MAX_STREAMS_PER_PRINCIPAL"] = str(per_key)
        notes.append(
            f"CORTEX_SSE_MAX_STREAMS_PER_PRINCIPAL={per_key} (default {cap}): {count} streams need more than the "
            f"{max_keys} API keys one user may hold at {cap} streams each; spread over {keys} keys")
    wanted_connections = count + 1000
    if wanted_connections > defaults["max_connections"]:
        settings["CORTEX_MAX_CONNECTIONS"] = str(wanted_connections)
        notes.append(
            f"CORTEX_MAX_CONNECTIONS={wanted_connections} (default {defaults['max_connections']}): one process serves "
            f"at most that many connections at once, further ones wait in the listen backlog — a process meant to "
            f"hold {count} streams must allow them (plus room for requests)")
    notes.append(
        f"CORTEX_CLIENT_TIMEOUT {defaults['client_timeout']:g} s and CORTEX_SSE_MAX_SECONDS "
        f"{defaults['sse_max_seconds']:g} s kept (heartbeat every 15 s; the phase must end before the first stream "
        f"does)")
    return {"settings": settings, "keys": keys, "notes": notes, "server_fds": count + IDLE_SERVER_FDS,
            "client_fds": -(-count // clients) + IDLE_CLIENT_FDS}


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def run_idle(args) -> int:
    """``--idle N``: the checks, the header, one run per stack, the verdict (0 PASS, 1 FAIL, 2 cannot run)."""
    import resource
    import signal

    import gevent

    hub = gevent.get_hub()
    hub.NOT_ERROR = (*hub.NOT_ERROR, KeyboardInterrupt)

    def on_sigterm(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    plan = idle_plan(args.idle, args.clients)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max(plan["server_fds"], plan["client_fds"])
    if hard != resource.RLIM_INFINITY and hard < needed:
        print(
            f"bench: --idle {args.idle} needs an open-file limit (RLIMIT_NOFILE) of at least {plan['server_fds']} "
            f"for the server process ({args.idle} streams + {IDLE_SERVER_FDS}) and {plan['client_fds']} for each of "
            f"the {args.clients} client processes, but the hard limit here is {hard} (`ulimit -Hn`). Raise the hard "
            f"limit (as root: `ulimit -Hn {needed}` in the shell that starts the bench, `LimitNOFILE={needed}` in a "
            f"systemd unit, `nofile` in /etc/security/limits.conf, `--ulimit nofile={needed}:{needed}` for "
            f"Docker), or ask for fewer streams.", file=sys.stderr)
        return 2
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            low, high = (int(value) for value in handle.read().split())
    except OSError:
        low, high = 0, 65535
    if high - low + 1 < args.idle + 1000:
        print(f"bench: --idle {args.idle} needs {args.idle + 1000} local ports towards 127.0.0.1, but "
              f"net.ipv4.ip_local_port_range is {low}–{high}; widen it or ask for fewer streams", file=sys.stderr)
        return 2
    if args.stacks is None:
        stacks = ["cortex+redis" if args.redis_url else "cortex"]
    else:
        stacks = [name.strip() for name in args.stacks.split(",") if name.strip()]
    for name in stacks:
        if name not in ("cortex", "cortex+redis"):
            print(f"bench: --idle measures the stacks cortex and cortex+redis, not {name!r}", file=sys.stderr)
            return 2
        if name == "cortex+redis" and not args.redis_url:
            print("bench: the stack cortex+redis needs --redis-url", file=sys.stderr)
            return 2
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cpus = (allowed[0], allowed[1]) if len(allowed) >= 2 else (None, None)
    if cpus[1] is not None:
        os.sched_setaffinity(0, {cpus[1]})
    raise_fd_limit()
    pinning = (
        f"server on CPU {cpus[0]}; parent (GET /api prober, publisher) and {args.clients} client processes on CPU "
        f"{cpus[1]}" if cpus[0] is not None else "not pinned (fewer than 2 CPUs)"
    )
    import platform
    import tempfile
    from datetime import datetime

    load = os.getloadavg()
    print(f"Cortex SSE benchmark, idle streams  {datetime.now().astimezone():%Y-%m-%d %H:%M:%S %z}")
    print(f"python    {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs; {pinning}")
    print(f"database  {args.database_url or 'sqlite (temporary file)'}; redis {args.redis_url or 'none'}")
    print(f"load      {args.idle} idle streams in {args.clients} client processes ({args.connect_concurrency} being "
          f"opened at once); GET /api at {args.api_rate:g}/s over "
          f"{args.api_connections} keep-alive connections for {args.duration:g} s; {args.idle_events} events published "
          f"meanwhile")
    print(f"limits    open files: hard {hard if hard != resource.RLIM_INFINITY else 'unlimited'}, every process raises "
          f"its soft limit to min(hard, 65536); local ports {low}–{high}")
    print(f"machine   load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min) at the start")
    print("settings  " + "\n          ".join(plan["notes"]), flush=True)
    results = []
    workdir = tempfile.mkdtemp(prefix="cortex-bench-sse-")
    try:
        for stack in stacks:
            try:
                results.append(idle_stack(args, stack, workdir, cpus, plan))
            except (RuntimeError, OSError) as exc:  # the server's log tail is printed already
                print(f"\n[{stack}] FAIL: the run could not finish: {exc}", flush=True)
                return 1
    except KeyboardInterrupt:
        print("bench: interrupted; processes stopped", file=sys.stderr)
        return 130
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(idle_table(results))
    failed = False
    for result in results:
        print(f"\n[{result['stack']}] {'PASS' if not result['failures'] else 'FAIL'}: {result['ready']}/"
              f"{result['streams']} idle streams, GET /api p99 {result['api']['p99_ms']} ms from sending, "
              f"{result['api_from_schedule']['p99_ms']} ms from the schedule (target < {TARGET_API_P99 * 1000:g} ms "
              f"for both); {result['deliveries']}/{result['expected_deliveries']} deliveries"
              + "".join(f"\n  - {failure}" for failure in result["failures"]))
        failed = failed or bool(result["failures"])
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


def idle_stack(args, stack: str, workdir: str, cpus, plan: dict) -> dict:
    """One server, N idle streams, the measured phase; the figures of one run."""
    import time

    import gevent
    from _loadgen import HttpConnection, build_request, percentile

    print(f"\n[{stack}]", flush=True)
    data_dir = os.path.join(workdir, "idle-" + stack.replace("+", "-"))
    argv = ["--serve", "--data-dir", data_dir, "--watch-stalls"]
    for name, value in plan["settings"].items():
        argv += ["--setting", f"{name}={value}"]
    if not plan["settings"]:
        argv += ["--setting", "CORTEX_LOG_LEVEL=WARNING"]  # --setting given: no bench overrides
    if cpus[0] is not None:
        argv += ["--cpu", str(cpus[0])]
    if args.database_url:
        argv += ["--database-url", args.database_url]
    if stack != "cortex":
        argv += ["--redis-url", args.redis_url]
    log_path = os.path.join(workdir, f"idle-{stack}.log")
    server = Proc(argv, log_path=log_path)
    clients: list[Proc] = []
    try:
        info = server.line(90)
        port, token, project, pid = info["port"], info["token"], info["project"], info["pid"]
        settings = info["settings"]
        if info["fd_limit"] < plan["server_fds"]:
            raise RuntimeError(f"the server's open-file limit is {info['fd_limit']}, {plan['server_fds']} needed")
        deadline = time.monotonic() + 60
        while True:
            try:
                connection = HttpConnection(port, 2.0)
                status, _, _ = connection.request(build_request("/api"))
                connection.close()
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not answering; see {log_path}")
            gevent.sleep(0.1)

        # The API keys the streams authenticate with, created like any client would.
        publisher = [HttpConnection(port, 30.0)]  # replaced before the phase (the server closes idle ones)
        keys = []
        for number in range(plan["keys"]):
            body = {"name": f"bench idle {number:03d}", "scopes": ["events:read"]}
            status, answer, _ = publisher[0].request(
                build_request("/api/api-keys", token, method="POST", body=body))
            if status != 201:
                raise RuntimeError(f"POST /api/api-keys answered {status}: {answer[:200]!r}")
            keys.append(json.loads(answer)["key"])
        keys_file = os.path.join(workdir, f"idle-{stack}-keys.json")
        with open(keys_file, "w") as handle:
            json.dump(keys, handle)
        per_key = -(-args.idle // len(keys))
        print(f"  {len(keys)} API keys created, ≤ {per_key} streams each (cap per principal "
              f"{settings['sse_max_streams_per_principal']}); server: CORTEX_MAX_CONNECTIONS "
              f"{settings['max_connections']}, client timeout {settings['client_timeout']:g} s, stream life "
              f"{settings['sse_max_seconds']:g} s, heartbeat {info['heartbeat_seconds']:g} s, open-file limit "
              f"{info['fd_limit']}", flush=True)
        counter = iter(range(1, 10**6))

        def publish(prefix: str, number: int | None = None) -> tuple[float, float]:
            number = next(counter) if number is None else number
            started = time.clock_gettime(time.CLOCK_MONOTONIC)
            status, body, _ = publisher[0].request(post_participant(port, token, project, f"{prefix}{number:06d}"))
            if status != 201:
                raise RuntimeError(f"POST participant answered {status}: {body[:200]!r}")
            return started, time.clock_gettime(time.CLOCK_MONOTONIC)

        publish("bench-x")  # warm the write path
        idle_api = probe_api(port, args.api_rate, args.api_connections, 3.0)
        rss_before, fds_before, cpu_before = vm_rss_kib(pid), fd_count(pid), cpu_seconds(pid)

        shares = [args.idle // args.clients + (i < args.idle % args.clients) for i in range(args.clients)]
        opened = time.monotonic()
        offset = 0
        for number, share in enumerate(shares):
            gate = max(1, args.connect_concurrency // args.clients + (number < args.connect_concurrency % args.clients))
            client_argv = ["--client", "--port", str(port), "--path", "/api/events/stream", "--count", str(share),
                           "--keys-file", keys_file, "--offset", str(offset), "--gate", str(gate)]
            if cpus[1] is not None:
                client_argv += ["--cpu", str(cpus[1])]
            clients.append(Proc(client_argv, log_path=os.path.join(workdir, f"idle-{stack}-client{number}.log"),
                                stdin=True))
            offset += share
        # every stream must be open before its life (CORTEX_SSE_MAX_SECONDS) could end within the phase
        budget = settings["sse_max_seconds"] - args.duration - IDLE_GRACE - 20
        ready, failed, state = 0, 0, {}
        while True:
            gevent.sleep(1.0)
            ready, state = 0, {}
            for proc in clients:
                proc.send("status")
                report = proc.line(30)
                ready += report["ready"]
                for key, value in report["state"].items():
                    state[key] = state.get(key, 0) + value
            failed = sum(value for key, value in state.items() if key not in ("ready", "duplicate deliveries"))
            if ready >= args.idle or ready + failed >= args.idle:
                break
            if time.monotonic() - opened > budget:
                break
        connect_seconds = time.monotonic() - opened
        cpu_connect = cpu_seconds(pid) - cpu_before
        if ready < args.idle:
            print(f"  only {ready}/{args.idle} streams open after {connect_seconds:.1f} s; client states {state}",
                  flush=True)
            if server.log:
                server.log.flush()
            with open(log_path, "rb") as handle:  # why: the server's log, without the stall lines
                lines = [line for line in handle.read().decode(errors="replace").splitlines()
                         if not line.startswith('{"bench": ')]
            print("  --- server log (last 40 lines) ---\n  " + "\n  ".join(lines[-40:]), flush=True)
        gevent.sleep(2)
        rss_after, fds_after = vm_rss_kib(pid), fd_count(pid)
        print(
            f"  {ready}/{args.idle} streams open and receiving after {connect_seconds:.1f} s (server CPU "
            f"{cpu_connect:.1f} s, {cpu_connect / max(ready, 1) * 1e3:.2f} ms per stream); server RSS "
            f"{rss_before / 1024:.1f} → {rss_after / 1024:.1f} MiB "
            f"({(rss_after - rss_before) / max(ready, 1):.1f} KiB per stream); open fds {fds_before} → {fds_after}",
            flush=True,
        )

        # The measured phase: GET /api throughout, a few events, at least one heartbeat period. A fresh connection
        # for the events: the first one may have been idle longer than CORTEX_CLIENT_TIMEOUT while streams opened.
        publisher[0].close()
        publisher[0] = HttpConnection(port, 30.0)
        for proc in clients:
            proc.send("mark")
            proc.line(30)
        samples: list[tuple[float, float, float | None]] = []
        published: dict[int, tuple[float, float]] = {}

        def publisher_loop(start: float) -> None:
            for number in range(1, args.idle_events + 1):
                at = start + args.duration * (number - 0.5) / args.idle_events
                gevent.sleep(max(0.0, at - time.monotonic()))
                published[number] = publish("bench-m", number)

        import gc

        gc.disable()  # the parent's GC pauses must not show up as the server's latency (re-enabled below)
        load_start = os.getloadavg()
        cpu0, wall0, core0 = cpu_seconds(pid), time.monotonic(), cpu_busy(cpus[0])
        start = time.monotonic()
        prober = gevent.spawn(probe_api, port, args.api_rate, args.api_connections, args.duration, samples)
        publishing = gevent.spawn(publisher_loop, start)
        publishing.join(timeout=args.duration + 60)
        if not publishing.successful():
            raise RuntimeError(f"publishing failed: {publishing.exception}")
        api = prober.get(timeout=args.duration + 30)
        wall = time.monotonic() - wall0
        server_cpu = (cpu_seconds(pid) - cpu0) / wall
        core1 = cpu_busy(cpus[0])
        core_busy = (core1[0] - core0[0]) / max(1, core1[1] - core0[1])
        others = (max(0.0, core_busy - server_cpu) if cpus[0] is not None
                  else max(0.0, core_busy * (os.cpu_count() or 1) - server_cpu))
        load_end = os.getloadavg()
        gc.enable()
        gevent.sleep(IDLE_GRACE)
        rss_end, fds_end = vm_rss_kib(pid), fd_count(pid)

        if server.log:
            server.log.flush()
        stalls = stalls_in(log_path, start - 1, start + wall)
        gcs = [item for item in stalls if item["bench"] == "gc"]
        lags = [item for item in stalls if item["bench"] == "lag"]

        per_event: dict[int, int] = {number: 0 for number in published}
        latencies: list[float] = []
        beats = beating = 0
        slots: dict[int, int] = {}
        state = {}
        ready_end = 0
        for proc in clients:
            proc.send("stop")
            report = proc.line(120)
            ready_end += report["ready"]
            beats += report["beats"]
            beating += report["beating"]
            for key, value in report["state"].items():
                state[key] = state.get(key, 0) + value
            for slot, value in report["beat_slots"].items():
                slots[int(slot)] = slots.get(int(slot), 0) + value
            for number, arrivals in report["times"].items():
                number = int(number)
                if number in published:
                    per_event[number] += len(arrivals)
                    latencies += [arrival - published[number][0] for arrival in arrivals]
        duplicates = state.get("duplicate deliveries", 0)
        closed = {key: value for key, value in state.items() if key not in ("ready", "duplicate deliveries")}
        deliveries = sum(per_event.values())
        expected = len(published) * ready

        # GET /api around the events: slow requests near a publish, and the p99 away from them
        publish_times = [sent for sent, _ in published.values()]

        def near_event(at: float) -> bool:
            return any(0 <= at - sent < EVENT_WINDOW for sent in publish_times)

        ok = [(at, latency) for _due, at, latency in samples if latency is not None]
        away = [latency for at, latency in ok if not near_event(at)]
        slow = [(at, latency) for at, latency in ok if latency >= TARGET_API_P99]
        # From the request's slot in the schedule instead of its sending: a request due while the server stalled
        # waits for its connection's previous answer first (what a client sending at a steady rate sees; the
        # figure from the sending alone leaves that out — "coordinated omission")
        scheduled = [at + latency - due for due, at, latency in samples if latency is not None]
        api_scheduled = {"p50_ms": ms(percentile(scheduled, 50)), "p99_ms": ms(percentile(scheduled, 99)),
                         "max_ms": ms(max(scheduled) if scheduled else None),
                         "over_100_ms": sum(1 for value in scheduled if value >= TARGET_API_P99)}

        def during_gc(at: float, latency: float) -> bool:  # a GC pause overlapped the request
            return any(item["at"] < at + latency and at < item["at"] + item["ms"] / 1000 for item in gcs)

        per_second: dict[int, int] = {}
        for slot, value in slots.items():
            per_second[slot // 10] = per_second.get(slot // 10, 0) + value
        result = {
            "stack": stack,
            "streams": args.idle,
            "ready": ready,
            "open_at_end": ready_end - sum(closed.get(key, 0) for key in ("closed by server",)),
            "connect_concurrency": args.connect_concurrency,
            "connect_seconds": round(connect_seconds, 1),
            "connect_server_cpu_ms_per_stream": round(cpu_connect / max(ready, 1) * 1000, 2),
            "api_keys": len(keys),
            "server_settings": settings,
            "bench_settings": plan["settings"],
            "fd_limit_server": info["fd_limit"],
            "rss_before_mib": round(rss_before / 1024, 1),
            "rss_after_mib": round(rss_after / 1024, 1),
            "rss_end_mib": round(rss_end / 1024, 1),
            "rss_per_stream_kib": round((rss_after - rss_before) / max(ready, 1), 1),
            "fds_before": fds_before,
            "fds_after": fds_after,
            "fds_end": fds_end,
            "api_idle_before_streams": idle_api,
            "api": api,
            "api_from_schedule": api_scheduled,
            "api_p99_away_from_events_ms": ms(percentile(away, 99)),
            "api_slow_requests": len(slow),
            "api_slow_near_events": sum(1 for at, _ in slow if near_event(at)),
            # when (seconds into the phase) the slow ones were sent, and how long they took (ms): the first 50
            "api_slow_at": [[round(at - start, 2), ms(latency)] for at, latency in slow[:50]],
            "events_at": [round(sent - start, 2) for sent in sorted(publish_times)],
            "api_slow_during_gc": sum(1 for at, latency in slow if during_gc(at, latency)),
            # the server's garbage collections ≥ 5 ms and event-loop lags ≥ 20 ms in the phase: [s into it, ms]
            "server_gc_pauses": [[round(item["at"] - start, 2), item["ms"], item["cpu_ms"], item["generation"],
                                  item["collected"]]
                                 for item in gcs],  # [s into the phase, wall ms, CPU ms, generation, collected]
            "server_loop_lags": [[round(item["at"] - start, 2), item["ms"]] for item in lags],
            "events": len(published),
            "deliveries": deliveries,
            "expected_deliveries": expected,
            "deliveries_per_event": [per_event[number] for number in sorted(per_event)],
            "duplicate_deliveries": duplicates,
            "delivery_p50_ms": ms(percentile(latencies, 50)),
            "delivery_p99_ms": ms(percentile(latencies, 99)),
            "delivery_max_ms": ms(max(latencies) if latencies else None),
            "post_ms": [ms(done - sent) for sent, done in (published[number] for number in sorted(published))],
            "heartbeat_seconds": info["heartbeat_seconds"],
            "heartbeats_in_phase": sum(slots.values()),
            "streams_with_heartbeat_in_phase": beating,
            "heartbeats_peak_per_100ms": max(slots.values()) if slots else 0,
            "heartbeats_peak_per_second": max(per_second.values()) if per_second else 0,
            # heartbeats that arrived per second of the phase (from its start)
            "heartbeats_per_second": [per_second.get(second, 0) for second in
                                      range(int(start), int(start + wall + IDLE_GRACE) + 1)],
            "phase_seconds": round(wall, 1),
            "server_cpu_percent": round(server_cpu * 100, 1),
            "others_on_server_cpu_percent": round(others * 100),
            "load_average_start": [round(value, 2) for value in load_start],
            "load_average_end": [round(value, 2) for value in load_end],
            "client_state": state,
        }
        failures = []
        if ready < args.idle:
            failures.append(f"only {ready} of {args.idle} streams opened ({closed or 'no errors'})")
        if (api["p99_ms"] or 1e9) >= TARGET_API_P99 * 1000:
            failures.append(f"GET /api p99 {api['p99_ms']} ms ≥ {TARGET_API_P99 * 1000:g} ms "
                            f"({len(slow)} requests ≥ 100 ms, {result['api_slow_near_events']} of them within "
                            f"{EVENT_WINDOW:g} s after a publish, {result['api_slow_during_gc']} overlapping a garbage "
                            f"collection of the server)")
        if (api_scheduled["p99_ms"] or 1e9) >= TARGET_API_P99 * 1000:
            failures.append(f"GET /api p99 from the schedule {api_scheduled['p99_ms']} ms ≥ "
                            f"{TARGET_API_P99 * 1000:g} ms ({api_scheduled['over_100_ms']} requests ≥ 100 ms)")
        if api["errors"]:
            failures.append(f"GET /api: {api['errors']} errors")
        if deliveries != expected or duplicates:
            failures.append(f"deliveries {deliveries}/{expected}, {duplicates} duplicates")
        if closed:
            failures.append(f"streams failed or closed: {closed}")
        result["failures"] = failures
        longest_gc = max(gcs, key=lambda item: item["ms"], default={})
        print(
            f"  GET /api before the streams: p50 {idle_api['p50_ms']} / p99 {idle_api['p99_ms']} ms\n"
            f"  GET /api with {ready} idle streams, {wall:.1f} s: p50 {api['p50_ms']} ms, p99 {api['p99_ms']} ms, max "
            f"{api['max_ms']} ms ({api['requests']} requests, {api['errors']} errors; {len(slow)} ≥ 100 ms, "
            f"{result['api_slow_near_events']} of them within {EVENT_WINDOW:g} s after a publish; p99 away from the "
            f"events {result['api_p99_away_from_events_ms']} ms)\n"
            f"  … from each request's slot in the schedule (queued behind a late answer counts): p50 "
            f"{api_scheduled['p50_ms']} ms, p99 {api_scheduled['p99_ms']} ms, max {api_scheduled['max_ms']} ms "
            f"({api_scheduled['over_100_ms']} ≥ 100 ms)\n"
            f"  events: {deliveries}/{expected} deliveries ({result['deliveries_per_event']} per event), "
            f"{duplicates} duplicates; publish→receive p50 {result['delivery_p50_ms']} / p99 "
            f"{result['delivery_p99_ms']} / max {result['delivery_max_ms']} ms (POST {result['post_ms']} ms)\n"
            f"  server stalls in the phase: {len(gcs)} garbage collections ≥ {STALL_GC_MS:g} ms (longest "
            f"{longest_gc.get('ms', 0)} ms, {longest_gc.get('cpu_ms', 0)} ms of it on the CPU, generation "
            f"{longest_gc.get('generation', '–')}; all: generations {sorted({item['generation'] for item in gcs})}), "
            f"{len(lags)} event-loop lags ≥ {STALL_LAG_MS:g} ms "
            f"(longest {max((item['ms'] for item in lags), default=0)} ms); {result['api_slow_during_gc']} of the "
            f"{len(slow)} slow requests overlapped a collection\n"
            f"  heartbeats in the phase: {result['heartbeats_in_phase']} on {beating}/{ready} streams; peak "
            f"{result['heartbeats_peak_per_100ms']} per 100 ms, {result['heartbeats_peak_per_second']} per second\n"
            f"  server CPU {result['server_cpu_percent']}% during the phase (others took "
            f"{result['others_on_server_cpu_percent']}% of its CPU); RSS at the end {rss_end / 1024:.1f} MiB, open fds "
            f"{fds_end}; load average {load_start[0]:.2f} → {load_end[0]:.2f}\n"
            f"  client states {state}",
            flush=True,
        )
        return result
    except Exception:
        print_server_log(log_path, stack, server)
        raise
    finally:
        for proc in clients:
            proc.stop()
        server.stop()


def idle_table(results: list[dict]) -> str:
    rows = [
        "| stack | streams open | connect | RSS per stream | server fds | GET /api p50 / p99 / max | p99 from the "
        "schedule | deliveries | heartbeats (streams) | server CPU | load average |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        ok = "✓" if (r["api"]["p99_ms"] or 1e9) < TARGET_API_P99 * 1000 else "✗"
        ok_scheduled = "✓" if (r["api_from_schedule"]["p99_ms"] or 1e9) < TARGET_API_P99 * 1000 else "✗"
        rows.append(
            f"| {r['stack']} | {r['ready']}/{r['streams']} | {r['connect_seconds']} s | {r['rss_per_stream_kib']} KiB "
            f"| {r['fds_before']} → {r['fds_after']} | {r['api']['p50_ms']} / {r['api']['p99_ms']} / "
            f"{r['api']['max_ms']} ms {ok} | {r['api_from_schedule']['p99_ms']} ms {ok_scheduled} "
            f"| {r['deliveries']}/{r['expected_deliveries']} "
            f"| {r['streams_with_heartbeat_in_phase']}/{r['ready']} | {r['server_cpu_percent']}% "
            f"| {r['load_average_start'][0]} → {r['load_average_end'][0]} |"
        )
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="SSE benchmark of one Cortex server process (latency, memory, API responsiveness).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--subscribers", type=int, default=1000, help="concurrent event streams")
    parser.add_argument("--clients", type=int, default=4, help="client processes sharing the subscribers")
    parser.add_argument("--events", type=int, default=100, help="events published in the measured phase")
    parser.add_argument("--rate", type=float, default=5.0, help="events per second")
    parser.add_argument("--api-rate", type=float, default=100.0, help="GET /api requests per second meanwhile")
    parser.add_argument("--api-connections", type=int, default=4)
    parser.add_argument("--stacks", help="which to measure (the Redis ones need --redis-url); default "
                        "cortex,cortex+redis,flask-sse, with --idle cortex (cortex+redis with --redis-url)")
    parser.add_argument("--idle", type=int, metavar="N",
                        help="hold N idle streams and measure GET /api meanwhile (see the module documentation)")
    parser.add_argument("--duration", type=float, default=30.0, help="--idle: seconds GET /api is measured")
    parser.add_argument("--idle-events", type=int, default=3, help="--idle: events published in that time")
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory")
    parser.add_argument("--redis-url", help="e.g. redis://127.0.0.1:6379/0")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    # internal: the subprocesses
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stock", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--connect-concurrency", type=int, default=400,
                        help="--idle: streams being opened at once, over all client processes (a reconnect storm)")
    parser.add_argument("--gate", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--keys-file", help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--setting", action="append", help=argparse.SUPPRESS)
    parser.add_argument("--watch-stalls", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve:
        return serve(args)
    if args.client:
        return client(args)
    if args.idle is not None:
        if args.idle < 1 or args.clients < 1 or args.duration <= 0 or args.idle_events < 1 or args.api_rate <= 0 \
                or args.api_connections < 1 or args.connect_concurrency < 1:
            print("bench: --idle, --clients, --idle-events, --api-connections, --connect-concurrency must be >= 1, "
                  "--duration and --api-rate > 0", file=sys.stderr)
            return 2
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        return run_idle(args)
    if args.subscribers < 1 or args.clients < 1 or args.events < 1 or args.rate <= 0 or args.api_rate <= 0:
        print("bench: --subscribers, --clients, --events must be >= 1, --rate and --api-rate > 0", file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
