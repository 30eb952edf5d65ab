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

Everything talks to 127.0.0.1 only, every wait is bounded, subprocesses and temporary directories are removed
on exit and on Ctrl-C; with ``--database-url`` the seeded tenant and its events are deleted again.

Usage:
    tools/bench_sse.py [--subscribers 1000] [--clients 4] [--events 100] [--rate 5]
                       [--redis-url redis://127.0.0.1:6379/0] [--stacks cortex,cortex+redis,flask-sse]
                       [--database-url postgresql://…] [--json]
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
    raise_fd_limit()
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
    from models.identity import Project, Tenant, User, create_project, create_user

    os.makedirs(args.data_dir, exist_ok=True)
    settings = Settings.from_env(
        # not os.environ. Every subscriber is the same user, and thousands of them are the point: the per-principal
        # stream cap and the connection bound of `cortex serve` are raised for this bench.
        env={"CORTEX_LOG_LEVEL": "WARNING", "CORTEX_SSE_MAX_SECONDS": "3600", "CORTEX_MAX_CONNECTIONS": "100000",
             "CORTEX_SSE_MAX_STREAMS_PER_PRINCIPAL": "100000"},
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
    print(json.dumps({"port": port, "token": token, "pid": os.getpid(), "project": project.id}), flush=True)
    try:
        serve_with_engines(app, HOST, port)  # returns on SIGINT (KeyboardInterrupt), engines stopped
    finally:
        if args.database_url:  # leave a shared database as we found it
            try:
                with db.connection_context():
                    DomainEvent.delete().where(DomainEvent.tenant_id == user.tenant_id).execute()
                    User.delete().where(User.id == user.id).execute()
                    Project.delete().where(Project.tenant == user.tenant_id).execute()
                    Tenant.delete().where(Tenant.id == user.tenant_id).execute()
            except Exception as exc:  # best effort on the way out
                print(f"bench: could not remove the seeded tenant {user.tenant_id}: {exc}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------- client subprocess


def client(args) -> int:
    """Hold ``--count`` streams; answer "status" and "stop" lines on stdin with one JSON line each."""
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
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
    gate = BoundedSemaphore(100)
    times: dict[int, list[float]] = defaultdict(list)
    state = Counter()
    sockets = []

    def read(index: int) -> None:
        try:
            with gate:
                sock = gsocket.create_connection((HOST, args.port), timeout=None)
                sockets.append(sock)
                sock.sendall(raw)
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
                return
            seen: set[int] = set()
            tail = b""
            ready = False
            while True:
                if data:
                    if not ready:
                        ready = True
                        state["ready"] += 1
                    now = time.clock_gettime(time.CLOCK_MONOTONIC)
                    window = tail + data
                    for match in pattern.finditer(window):
                        number = int(match.group(1))
                        if number not in seen:
                            seen.add(number)
                            times[number].append(now)
                    tail = window[-16:]
                data = sock.recv(65536)
                if not data:
                    state["closed by server"] += 1
                    return
        except Exception as exc:  # counted and reported
            state[type(exc).__name__] += 1

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
                print(json.dumps({"ready": state["ready"], "state": dict(state)}), flush=True)
            elif command == b"stop":
                report = {"ready": state["ready"], "state": dict(state), "times": times}
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
    stacks = [name.strip() for name in args.stacks.split(",") if name.strip()]
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


def probe_api(port: int, rate: float, connections: int, seconds: float) -> dict:
    """GET /api at ``rate`` per second over ``connections`` keep-alive connections for ``seconds``."""
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
                if not keep:
                    connection.close()
                    connection = None
            except Exception:
                errors[0] += 1
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
        log_path = os.path.join(workdir, f"{stack}.log")
        if server.log:
            server.log.flush()
        if os.path.exists(log_path):
            with open(log_path, "rb") as handle:
                print(f"--- {stack} server log (tail) ---\n{handle.read()[-4000:].decode(errors='replace')}",
                      file=sys.stderr)
        raise
    finally:
        for proc in clients:
            proc.stop()
        server.stop()


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
    parser.add_argument("--stacks", default="cortex,cortex+redis,flask-sse",
                        help="which to measure (the Redis ones need --redis-url)")
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
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve:
        return serve(args)
    if args.client:
        return client(args)
    if args.subscribers < 1 or args.clients < 1 or args.events < 1 or args.rate <= 0 or args.api_rate <= 0:
        print("bench: --subscribers, --clients, --events must be >= 1, --rate and --api-rate > 0", file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
