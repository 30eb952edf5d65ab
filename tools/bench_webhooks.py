#!/usr/bin/env python3
"""Benchmark webhook delivery by one ``cortex worker`` process: deliveries/s and event → receipt latency.

Set-up, per run, on a fresh database (SQLite in a temporary directory, or a PostgreSQL database the bench creates
and drops, see ``--database-url``):

- **Receiver**: a separate process (this file with ``--receiver``; gevent ``pywsgi``, keep-alive) listening on one
  port per endpoint (``http://127.0.0.1:<port i>/hook/<i>``: distinct hosts as far as the worker's connection
  pools go). It answers 204 at once, checks every Standard Webhooks signature and records per request the
  receipt time (``time.time()`` once the body is read), the endpoint, the envelope ``id`` and the emit time the
  bench put into the event (``payload.data.t``). With ``--hang`` endpoint 0 holds every request longer than the
  worker's timeout (``--hang-seconds``) before answering.
- **Data**: one user, ``--subscriptions`` (10) projects with ONE subscription each (``events: ["*"]``), so every
  event is one delivery: ``--events`` (5,000) events round-robin over the projects = 5,000 deliveries, 500 per
  endpoint. Seeded with the models in this process (``create_app`` + ``upgrade``), like the API would.
- **Worker**: ``python -m cortex.cli worker`` (the real command) with ``CORTEX_OUTBOUND_ALLOW_PRIVATE=true`` and
  every other ``CORTEX_WEBHOOK_*`` setting at its default, except ``CORTEX_WEBHOOK_TIMEOUT=2`` in the hang run.
  It polls the event log every ``CORTEX_WEBHOOK_POLL_INTERVAL`` (0.05 s): nothing in another process wakes it.
- **Events**: ``message.created`` written by this process with ``models.events.emit`` inside
  ``models.base.transaction()``, as a write of the API would; ``payload.data.t`` is the exact emit time and the
  envelope ``timestamp`` the same instant (ms precision). Latency = receipt time − emit time (one clock).

Each run has two phases (after a warm-up of 2 events per endpoint):

  (a) paced: ``--rate`` (500) events/s offered, emitted every 10 ms (a few per transaction) until ``--events``;
      deliveries/s from the first to the last receipt, event → receipt p50/p99, and the lag of the last one;
  (b) backlog: the worker is stopped, ``--events`` more are logged at once, the worker is started again;
      drain rate = deliveries / (last receipt − first receipt).

Runs: ``healthy`` (every endpoint answers at once) and ``hang`` (endpoint 0 hangs): the other endpoints'
deliveries/s and latency are shown next to the same endpoints' figures of the healthy run, and the hanging
endpoint's attempts. After each phase: every event must have reached its endpoint (hanging one excepted, whose
events must still be queued), counted from the receiver's records and from the database; no bad signature.

With 2+ CPUs the worker is pinned to the first CPU, the receiver and this process to the second (a PostgreSQL
server is not pinned). A calibration row first (``GET /api`` on a ``tools/bench_http.py`` server for 5 s, the
figure the other benches print) shows how much CPU the machine gives.

Usage:
    tools/bench_webhooks.py [--events 5000] [--subscriptions 10] [--rate 500] [--runs healthy,hang]
                            [--hang-seconds 5] [--no-calibrate] [--json] [--strict]
                            [--database-url postgresql://postgres@127.0.0.1:5432/bench_wh] [--redis-url …]
                            [--profile DIR [--py-spy /tmp/spy/bin/py-spy]] [--keep]
                            [--set CORTEX_WEBHOOK_POLL_INTERVAL=0.02 …] [--worker-command "python my_worker.py"]

``--profile`` records the worker with py-spy during each phase (raw format, one file per run and phase);
``--set`` changes a worker setting (printed in the header); ``--worker-command`` runs another worker (e.g. an
instrumented copy) for experiments; ``--keep`` keeps the logs of the receiver and the worker.

With ``--database-url`` the bench OWNS the databases ``<name>_healthy`` and ``<name>_hang`` on that server: each
is dropped if it exists, created, used for one run and dropped again (``<name>`` is the URL's database name).
"""

from __future__ import annotations

# Only modules that do not pull in socket/threading/ssl here: the same file is the receiver subprocess, which
# monkey-patches with gevent before anything else imports them. So tools/_loadgen.py (gevent, subprocess, ...) is
# imported inside the functions of the bench process only.
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
TARGET_RATE = 500.0  # deliveries/s of one worker process (the target)
TARGET_P50 = 0.050  # event → receipt, paced
EVENT_TYPE = "message.created"
EMIT_TICK = 0.010  # the paced emitter commits what is due every 10 ms
BACKLOG_BATCH = 500  # events per transaction when the backlog is logged at once
WARMUP_PER_ENDPOINT = 2
HANG_TIMEOUT = 2  # CORTEX_WEBHOOK_TIMEOUT of the hang run
STALL = 15.0  # seconds without a new receipt after which a phase stops waiting
MAX_WAIT = 240.0  # seconds at most after the last emit
WORKER_READY_TIMEOUT = 90.0
SECRET_KEY = "bench-webhooks-secret-key-0123456789abcdef-xyz"


# ----------------------------------------------------------------- receiver subprocess


def receiver(args) -> int:
    """The local endpoints; prints {"pid", "ports", "control"}, serves until SIGTERM or the parent is gone."""
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    from gevent import monkey

    monkey.patch_all()
    import signal
    import threading
    import time
    from urllib.parse import parse_qs

    import gevent
    import orjson
    from gevent.event import Event
    from gevent.pywsgi import WSGIServer

    sys.path.insert(0, ROOT)
    from cortex.lib.webhook_signing import verify

    secrets = json.loads(open(args.secrets).read())  # noqa: SIM115 - read once at start
    hang = {int(i) for i in args.hang_endpoints.split(",") if i != ""}
    records: list[tuple] = []  # (receipt time, endpoint, envelope id, emit time, webhook-id, signature ok)
    counts = [0] * len(secrets)
    bad = [0]

    def hook(index: int, environ, start_response):
        body = environ["wsgi.input"].read()
        now = time.time()
        headers = {"webhook-id": environ.get("HTTP_WEBHOOK_ID"),
                   "webhook-timestamp": environ.get("HTTP_WEBHOOK_TIMESTAMP"),
                   "webhook-signature": environ.get("HTTP_WEBHOOK_SIGNATURE")}
        try:
            verify(secrets[index], headers, body)
            ok = True
        except ValueError:
            ok = False
            bad[0] += 1
        try:
            envelope = orjson.loads(body)
            event_id, emitted = envelope["id"], envelope["payload"]["data"].get("t")
        except (ValueError, KeyError, TypeError):
            event_id, emitted = None, None
        records.append((now, index, event_id, emitted, headers["webhook-id"], ok))
        counts[index] += 1
        if index in hang:
            gevent.sleep(args.hang_seconds)  # longer than the worker's timeout: it gives up first
        start_response("204 No Content", [])
        return [b""]

    def make_hook(index: int):
        return lambda environ, start_response: hook(index, environ, start_response)

    def control(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/stats":
            body = {"total": len(records), "per_endpoint": counts, "bad_signatures": bad[0]}
        elif path == "/records":
            since = int(parse_qs(environ.get("QUERY_STRING", "")).get("since", ["0"])[0])
            body = records[since:]
        else:
            start_response("404 Not Found", [("Content-Length", "0")])
            return [b""]
        data = orjson.dumps(body)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    servers = [WSGIServer((HOST, 0), make_hook(i), log=None, error_log=None) for i in range(len(secrets))]
    control_server = WSGIServer((HOST, 0), control, log=None)
    for server in [*servers, control_server]:
        server.start()
    stop = Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    parent = os.getppid()

    def watch_parent():
        while os.getppid() == parent:
            time.sleep(1)
        stop.set()

    threading.Thread(target=watch_parent, daemon=True).start()
    print(json.dumps({"pid": os.getpid(), "ports": [s.server_port for s in servers],
                      "control": control_server.server_port}), flush=True)
    stop.wait()
    for server in [*servers, control_server]:
        server.stop(timeout=0.5)
    return 0


# ----------------------------------------------------------------- helpers of the bench process


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.1f} ms"


class Child:
    """A subprocess in its own session whose first stdout line says it is ready; stopped with SIGTERM."""

    def __init__(self, name: str, argv: list[str], log_path: str, env: dict | None = None, cpu: int | None = None):
        import subprocess

        self.name = name
        self.log_path = log_path
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()

        def pin():
            if cpu is not None and hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, {cpu})

        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.log, start_new_session=True, preexec_fn=pin)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def first_line(self, timeout: float) -> str:
        from _loadgen import read_first_line

        return read_first_line(self.proc, timeout, self.name, self.log_tail).decode()

    def log_tail(self, size: int = 3000) -> str:
        from _loadgen import log_file_tail

        return log_file_tail(self.log_path, f"{self.name} log", size, self.log)

    def stop(self, timeout: float = 20.0) -> None:
        from _loadgen import stop_process

        stop_process(self.proc, timeout)
        self.log.close()


def control_get(port: int, path: str):
    import urllib.request

    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=30) as response:
        return json.loads(response.read())


def postgres_cpu_seconds() -> float:
    """CPU seconds of every process named ``postgres`` (a local PostgreSQL server; 0 when there is none)."""
    from _loadgen import process_cpu_seconds

    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm", "rb") as handle:
                    if handle.read().strip() != b"postgres":
                        continue
            except OSError:
                continue
            total += process_cpu_seconds(int(entry)) or 0.0
    return total


def machine_busy_seconds() -> float | None:
    """CPU seconds spent by the whole machine (all CPUs, not idle or waiting for I/O), from /proc/stat."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(pids: dict) -> dict:
    """CPU seconds so far of the named processes, this process, local PostgreSQL and the machine."""
    import time

    from _loadgen import own_cpu_seconds, process_cpu_seconds

    snapshot = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
    snapshot.update(bench=own_cpu_seconds(), postgres=postgres_cpu_seconds(),
                    machine=machine_busy_seconds(), clock=time.monotonic())
    return snapshot


def cpu_shares(before: dict, after: dict) -> dict:
    """Fractions of one CPU used between two snapshots (``machine``: of all CPUs together)."""
    seconds = after["clock"] - before["clock"]
    shares = {}
    for name in before:
        if name != "clock":
            shares[name] = _share(before[name], after[name], seconds)
    return shares


def plan_cpus() -> tuple[int | None, int | None, str]:
    """(worker CPU, receiver + bench CPU) and a description; pins this process (as _loadgen.split_cpus)."""
    from _loadgen import split_cpus

    (worker, bench), _ = split_cpus()
    if worker is None:
        return None, None, "not pinned (fewer than 2 CPUs): worker, receiver and bench share the CPU"
    return worker, bench, (f"worker pinned to CPU {worker}, receiver + bench (emitter) to CPU {bench}; "
                           "a database server is not pinned")


# ----------------------------------------------------------------- databases


def run_database(base_url: str | None, run: str, workdir: str) -> tuple[str, callable]:
    """A fresh database URL for one run and a function that drops it."""
    if not base_url:
        path = os.path.join(workdir, run, "cortex.db")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return f"sqlite:///{path}", lambda: None
    from urllib.parse import urlparse, urlunparse

    import psycopg2
    from _loadgen import BenchError

    parsed = urlparse(base_url)
    if parsed.scheme not in ("postgres", "postgresql"):
        raise BenchError("--database-url must be a postgresql:// URL (SQLite is the default)")
    name = f"{parsed.path.lstrip('/') or 'bench_wh'}_{run}"

    def admin(statement: str) -> None:
        connection = psycopg2.connect(host=parsed.hostname or HOST, port=parsed.port or 5432,
                                      user=parsed.username, password=parsed.password, dbname="postgres")
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement)
        finally:
            connection.close()

    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{name}"')
    return urlunparse(parsed._replace(path=f"/{name}")), lambda: admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ----------------------------------------------------------------- one run


class Run:
    """One fresh database, receiver and worker; phases measured against them."""

    def __init__(self, args, name: str, hang: bool, workdir: str, cpus: tuple):
        self.args = args
        self.name = name
        self.hang = hang
        self.workdir = os.path.join(workdir, name)
        os.makedirs(self.workdir, exist_ok=True)
        self.cpus = cpus
        self.endpoints = args.subscriptions
        self.receiver: Child | None = None
        self.worker: Child | None = None
        self.drop = lambda: None
        self.number = 0  # events emitted so far in this run (their data.n)
        self.worker_env: dict = {}

    # -- set-up

    def setup(self) -> None:
        import base64
        import secrets as random_secrets

        from cortex.http.app import create_app
        from cortex.settings import Settings
        from models.base import db
        from models.database import upgrade
        from models.identity import create_project, create_user
        from models.webhooks import create_subscription

        url, self.drop = run_database(self.args.database_url, self.name, self.workdir)
        self.database_url = url
        secrets = [f"whsec_{base64.b64encode(random_secrets.token_bytes(24)).decode()}" for _ in range(self.endpoints)]
        secrets_path = os.path.join(self.workdir, "secrets.json")
        with open(secrets_path, "w") as handle:
            json.dump(secrets, handle)
        argv = [sys.executable, os.path.abspath(__file__), "--receiver", "--secrets", secrets_path,
                "--hang-endpoints", "0" if self.hang else "", "--hang-seconds", str(self.args.hang_seconds)]
        if self.cpus[1] is not None:
            argv += ["--cpu", str(self.cpus[1])]
        self.receiver = Child("receiver", argv, os.path.join(self.workdir, "receiver.log"), cpu=self.cpus[1])
        info = json.loads(self.receiver.first_line(30))
        self.ports, self.control = info["ports"], info["control"]

        data_dir = os.path.join(self.workdir, "data")
        os.makedirs(data_dir, exist_ok=True)
        settings = Settings.from_env(env={"CORTEX_LOG_LEVEL": "WARNING"}, data_dir=data_dir, database_url=url,
                                     secret_key=SECRET_KEY, redis_url=self.args.redis_url or None)
        self.app = create_app(settings)
        upgrade()
        from cortex.http.routing import event_types

        known = event_types(self.app.extensions["cortex"].spec)
        self.sub_index: dict[str, int] = {}
        self.projects = []
        with db.connection_context():
            user = create_user(f"bench-{random_secrets.token_hex(6)}@bench.invalid",
                               random_secrets.token_urlsafe(16), "Webhook Bench")
            for index in range(self.endpoints):
                project, _secret = create_project(user, f"Webhook bench {index:02d}")
                sub = create_subscription(project, {"url": f"http://{HOST}:{self.ports[index]}/hook/{index}",
                                                    "events": ["*"], "secret": secrets[index],
                                                    "description": f"bench endpoint {index}"}, known, limit=100)
                self.sub_index[sub.id] = index
                self.projects.append(project)
        self.tenant_id = user.tenant_id
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("CORTEX_") and key not in ("DATABASE_URL", "REDIS_URL")}
        env.update(DATABASE_URL=url, CORTEX_DATA_DIR=data_dir, CORTEX_SECRET_KEY=SECRET_KEY,
                   CORTEX_LOG_LEVEL="WARNING", CORTEX_OUTBOUND_ALLOW_PRIVATE="true")
        if self.hang:
            env["CORTEX_WEBHOOK_TIMEOUT"] = str(HANG_TIMEOUT)
        if self.args.redis_url:
            env["REDIS_URL"] = self.args.redis_url
        env.update(self.args.worker_settings)
        self.worker_env = env

    def start_worker(self) -> float:
        """Start ``cortex worker``; the time it said it is delivering."""
        import shlex
        import time

        from _loadgen import BenchError

        command = shlex.split(self.args.worker_command) if self.args.worker_command else [
            sys.executable, "-m", "cortex.cli", "worker"]
        self.worker = Child("cortex worker", command,
                            os.path.join(self.workdir, "worker.log"), env=self.worker_env, cpu=self.cpus[0])
        line = self.worker.first_line(WORKER_READY_TIMEOUT)
        if "cortex worker: running" not in line or "webhooks" not in line:
            raise BenchError(f"unexpected first line of cortex worker: {line!r}")
        return time.time()

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def close(self) -> None:
        self.stop_worker()
        if self.receiver is not None:
            self.receiver.stop()
            self.receiver = None
        from models.base import db

        if db.obj is not None:
            db.obj.close_all() if hasattr(db.obj, "close_all") else db.obj.close()
        try:
            self.drop()
        except Exception as exc:  # best effort on the way out
            print(f"bench: could not drop the database of run {self.name}: {exc}", file=sys.stderr)

    # -- events

    def emit_batch(self, count: int, phase: str, out: dict) -> None:
        """Emit ``count`` events in ONE transaction; note id → (endpoint, emit time, seq) in ``out``."""
        import time
        from datetime import UTC, datetime

        from models.base import transaction
        from models.events import emit

        with transaction():
            for _ in range(count):
                index = self.number % self.endpoints
                project = self.projects[index]
                self.number += 1
                now = time.time()
                event = emit(EVENT_TYPE, tenant_id=self.tenant_id, project_id=project.id,
                             resource_id=f"message:bench-{self.number}", action="created",
                             data={"id": f"bench-{self.number}", "sessionId": f"bench-session-{index}",
                                   "content": f"webhook bench {phase} {self.number}", "n": self.number, "t": now},
                             timestamp=datetime.fromtimestamp(now, UTC))
                out[event.id] = (index, now, event.seq)

    def emit_paced(self, count: int, rate: float, phase: str) -> dict:
        import time

        from models.base import db

        emitted: dict = {}
        with db.connection_context():
            start = time.perf_counter()
            sent = 0
            while sent < count:
                tick = time.perf_counter()
                due = min(count, int((tick - start) * rate) + 1)  # event k is due at start + k / rate
                if due > sent:
                    self.emit_batch(due - sent, phase, emitted)
                    sent = due
                if sent < count:  # next commit: the next event's due time, at least one tick after this one
                    wait = max(start + sent / rate, tick + EMIT_TICK) - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
        return emitted

    def emit_all(self, count: int, phase: str) -> dict:
        from models.base import db

        emitted: dict = {}
        with db.connection_context():
            for start in range(0, count, BACKLOG_BATCH):
                self.emit_batch(min(BACKLOG_BATCH, count - start), phase, emitted)
        return emitted

    # -- waiting and reading the receiver

    def stats(self) -> dict:
        return control_get(self.control, "/stats")

    def healthy_count(self, stats: dict) -> int:
        return sum(c for i, c in enumerate(stats["per_endpoint"]) if not (self.hang and i == 0))

    def wait_for(self, expected_healthy: int, base: dict) -> bool:
        """Wait until the healthy endpoints received ``expected_healthy`` requests more than in ``base``."""
        import time

        started = time.monotonic()
        last, last_change = -1, time.monotonic()
        while True:
            got = self.healthy_count(self.stats()) - self.healthy_count(base)
            if got >= expected_healthy:
                return True
            now = time.monotonic()
            if got != last:
                last, last_change = got, now
            if now - last_change > STALL or now - started > MAX_WAIT:
                return False
            time.sleep(0.05)

    def records_since(self, since: int) -> list:
        return control_get(self.control, f"/records?since={since}")

    # -- phases

    def warm_up(self) -> None:
        from _loadgen import BenchError

        base = self.stats()
        emitted = self.emit_all(WARMUP_PER_ENDPOINT * self.endpoints, "warm-up")
        healthy = sum(1 for index, _t, _s in emitted.values() if not (self.hang and index == 0))
        if not self.wait_for(healthy, base):
            raise BenchError(f"warm-up: the worker did not deliver {healthy} events{self.worker.log_tail()}")

    def measure(self, phase: str) -> dict:
        """One phase (``paced`` or ``backlog``); its figures."""
        import time

        base = self.stats()
        profiler = None
        if phase == "paced":
            cpu0 = cpu_snapshot({"worker": self.worker.pid, "receiver": self.receiver.pid})
            profiler = self.profile(phase, self.args.events / self.args.rate + 2)
            emitted = self.emit_paced(self.args.events, self.args.rate, phase)
            worker_ready = None
        else:
            self.stop_worker()
            emitted = self.emit_all(self.args.events, phase)
            worker_ready = self.start_worker()
            cpu0 = cpu_snapshot({"worker": self.worker.pid, "receiver": self.receiver.pid})
            profiler = self.profile(phase, self.args.events / TARGET_RATE + 2)
        last_emit = max(t for _i, t, _s in emitted.values())
        healthy_expected = sum(1 for index, _t, _s in emitted.values() if not (self.hang and index == 0))
        complete = self.wait_for(healthy_expected, base)
        cpu1 = cpu_snapshot({"worker": self.worker.pid, "receiver": self.receiver.pid})
        if profiler is not None:
            profiler.wait()
        time.sleep(0.3)  # stragglers (duplicates) and the hanging endpoint's last attempts
        records = self.records_since(base["total"])
        return self.figures(phase, emitted, records, base, complete, last_emit, worker_ready, cpu_shares(cpu0, cpu1))

    def profile(self, phase: str, seconds: float):
        """py-spy of the worker during a phase (``--profile``)."""
        import subprocess

        if not self.args.profile or self.worker is None:
            return None
        os.makedirs(self.args.profile, exist_ok=True)
        out = os.path.join(os.path.abspath(self.args.profile), f"{self.name}-{phase}.txt")
        return subprocess.Popen([self.args.py_spy, "record", "--pid", str(self.worker.pid), "--duration",
                                 str(int(seconds + 1)), "--rate", "500", "--format", "raw", "-o", out,
                                 "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def figures(self, phase, emitted, records, base, complete, last_emit, worker_ready, cpu) -> dict:
        import collections

        from _loadgen import percentile

        first: dict[str, tuple] = {}  # event id → first (receipt time, endpoint)
        seen = collections.Counter()
        misrouted = 0
        hang_attempts = 0
        for received, index, event_id, _t, _webhook_id, _ok in records:
            if self.hang and index == 0:
                hang_attempts += 1
            if event_id not in emitted:
                continue  # an earlier phase's (a retry to the hanging endpoint)
            seen[event_id] += 1
            if emitted[event_id][0] != index:
                misrouted += 1
            if event_id not in first:
                first[event_id] = (received, index)
        healthy = [eid for eid, (index, _t, _s) in emitted.items() if not (self.hang and index == 0)]
        missing = [eid for eid in healthy if eid not in first]
        latencies = [first[eid][0] - emitted[eid][1] for eid in healthy if eid in first]
        receipts = sorted(first[eid][0] for eid in healthy if eid in first)
        span = receipts[-1] - receipts[0] if len(receipts) > 1 else 0.0
        rate = len(receipts) / span if span > 0 else 0.0
        per_endpoint = collections.Counter(first[eid][1] for eid in healthy if eid in first)
        hang_events = [eid for eid, (index, _t, _s) in emitted.items() if self.hang and index == 0]
        return {
            "run": self.name, "phase": phase, "emitted": len(emitted), "healthy_expected": len(healthy),
            "received": len(receipts), "missing": len(missing), "complete": complete,
            "duplicates": sum(n - 1 for n in seen.values() if n > 1), "misrouted": misrouted,
            "bad_signatures": self.stats()["bad_signatures"] - base["bad_signatures"],
            "deliveries_per_s": rate, "per_endpoint_per_s": rate / max(1, len(per_endpoint)),
            "span_s": span, "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
            "max": max(latencies) if latencies else None,
            "lag_after_last_emit": (receipts[-1] - last_emit) if receipts else None,
            "first_after_worker_ready": (receipts[0] - worker_ready) if receipts and worker_ready else None,
            "hang_attempts": hang_attempts, "hang_events": len(hang_events),
            "hang_received": sum(1 for eid in hang_events if eid in first),
            "seq_range": (min(s for _i, _t, s in emitted.values()), max(s for _i, _t, s in emitted.values())),
            "cpu": cpu, "latency_kind": "paced" if phase == "paced" else "backlog",
        }

    def database_check(self, phase: dict) -> dict:
        """Statuses of the phase's webhook events per endpoint kind (read with the worker stopped or running)."""
        import collections

        import peewee as pw

        from models.base import db
        from models.webhooks import WebhookDelivery, WebhookEvent

        low, high = phase["seq_range"]
        statuses = collections.Counter()
        hang_statuses = collections.Counter()
        with db.connection_context():
            query = (WebhookEvent.select(WebhookEvent.subscription_id, WebhookEvent.status, pw.fn.COUNT(WebhookEvent.id))
                     .where(WebhookEvent.event_seq.between(low, high))
                     .group_by(WebhookEvent.subscription_id, WebhookEvent.status).tuples())
            for sub_id, status, count in query:
                target = hang_statuses if self.hang and self.sub_index.get(sub_id) == 0 else statuses
                target[status] += count
            attempts = (WebhookDelivery.select(pw.fn.COUNT(WebhookDelivery.id))
                        .join(WebhookEvent, on=(WebhookEvent.id == WebhookDelivery.webhook_event_id))
                        .where(WebhookEvent.event_seq.between(low, high)).scalar())
        return {"statuses": dict(statuses), "hang_statuses": dict(hang_statuses), "attempts_logged": attempts}


def _share(before: float | None, after: float | None, seconds: float) -> float | None:
    return None if before is None or after is None or seconds <= 0 else (after - before) / seconds


# ----------------------------------------------------------------- the bench


def calibrate(workdir: str, cpus: tuple) -> dict | None:
    """``GET /api`` on a tools/bench_http.py server for 5 s (20 connections): the other benches' calibration."""
    import _loadgen

    server = _loadgen.ServerProcess("cortex", os.path.join(ROOT, "tools", "bench_http.py"), workdir, cpus[0])
    try:
        server.start()
        result = _loadgen.measure("health", "GET /api (calibration, no database)", server.port,
                                  _loadgen.build_request("/api"), connections=20, duration=5.0, timeout=5.0,
                                  server_pid=server.pid)
    finally:
        server.stop()
    print(f"{_loadgen.fmt_row(result.label, result, 44)}\n  (docs/performance.md figure on a quiet machine: ~4,950 req/s; a much "
          "lower figure means the CPU is shared with other work)", flush=True)
    return result.as_dict()


def phase_line(phase: dict, hang: bool) -> str:
    who = "the other endpoints" if hang else "all endpoints"
    cpu = phase["cpu"]
    cpus = "cpu " + ", ".join(
        f"{name} {value * 100:.0f}%" + (f" of {os.cpu_count() * 100}%" if name == "machine" else "")
        for name, value in cpu.items() if value is not None and (name != "postgres" or value > 0.005))
    text = (f"  {phase['phase']:<8} {who}: {phase['received']}/{phase['healthy_expected']} delivered, "
            f"{phase['deliveries_per_s']:.0f} deliveries/s ({phase['per_endpoint_per_s']:.1f}/s per endpoint) over "
            f"{phase['span_s']:.2f} s")
    if phase["phase"] == "paced":
        text += (f"; event → receipt p50 {ms(phase['p50'])}, p99 {ms(phase['p99'])}, max {ms(phase['max'])}; "
                 f"last receipt {ms(phase['lag_after_last_emit'])} after the last emit")
    else:
        text += f"; first delivery {ms(phase['first_after_worker_ready'])} after the worker said it was ready"
    text += f"\n           {cpus}; duplicates {phase['duplicates']}, misrouted {phase['misrouted']}, " \
            f"bad signatures {phase['bad_signatures']}, missing {phase['missing']}"
    if hang:
        text += (f"\n           hanging endpoint 0: {phase['hang_attempts']} attempts received in this phase "
                 f"({phase['hang_events']} of its events emitted in it, {phase['hang_received']} of them reached it)")
    db_check = phase.get("db")
    if db_check:
        text += (f"\n           database: healthy endpoints' webhook events {db_check['statuses']}"
                 + (f"; hanging endpoint's {db_check['hang_statuses']}" if hang else "")
                 + f"; {db_check['attempts_logged']} attempts logged")
    return text


def run_bench(args, workdir: str) -> tuple[int, dict]:
    import platform
    import time
    from datetime import datetime

    import _loadgen

    worker_cpu, bench_cpu, pinning = plan_cpus()
    cpus = (worker_cpu, bench_cpu)
    now = datetime.now().astimezone()
    print(f"Cortex webhook delivery benchmark (one `cortex worker` process)  {now:%Y-%m-%d %H:%M:%S %z}")
    print(f"python    {platform.python_implementation()} {platform.python_version()} on {platform.system()} "
          f"{platform.release()} {platform.machine()}")
    print(f"packages  gevent {_loadgen.version_of('gevent')}, urllib3 {_loadgen.version_of('urllib3')}, "
          f"peewee {_loadgen.version_of('peewee')}, psycopg2 {_loadgen.version_of('psycopg2-binary')}")
    print(f"cpus      {os.cpu_count()} ({_loadgen.cpu_model()}); {pinning}")
    try:
        load = " ".join(open("/proc/loadavg").read().split()[:3])  # noqa: SIM115
    except OSError:
        load = "n/a"
    print(f"load      {load} (1/5/15-min load average before the run)")
    print(f"database  {_loadgen.describe_database(args.database_url)}, one fresh database per run; "
          f"redis {'on (REDIS_URL given to the worker)' if args.redis_url else 'off'}")
    print(f"set-up    {args.subscriptions} projects × 1 subscription (events [\"*\"]) → {args.subscriptions} "
          f"endpoints on distinct ports of one receiver process (gevent pywsgi, keep-alive, 204 at once, "
          f"signatures verified); {args.events} {EVENT_TYPE} events per phase, round-robin over the projects = "
          f"{args.events} deliveries ({args.events // args.subscriptions} per endpoint)")
    print(f"worker    python -m cortex.cli worker, CORTEX_OUTBOUND_ALLOW_PRIVATE=true, other CORTEX_WEBHOOK_* at "
          f"their defaults (CONCURRENCY 100, SUBSCRIPTION_CONCURRENCY 10, TIMEOUT 15, POLL_INTERVAL 0.05); "
          f"hang run: CORTEX_WEBHOOK_TIMEOUT={HANG_TIMEOUT}, endpoint 0 holds each request {args.hang_seconds:g} s"
          + "".join(f"; set {name}={value}" for name, value in args.worker_settings.items())
          + (f"; command: {args.worker_command}" if args.worker_command else ""))
    print(f"phases    warm-up ({WARMUP_PER_ENDPOINT} events per endpoint); paced: {args.rate:g} events/s offered, "
          f"committed every {EMIT_TICK * 1000:g} ms; backlog: worker stopped, {args.events} events logged "
          f"({BACKLOG_BATCH} per transaction), worker started; latency = receipt − emit time (one clock)")
    print(flush=True)
    report: dict = {"meta": {"date": now.isoformat(timespec="seconds"), "pinning": pinning, "load": load,
                             "database": _loadgen.describe_database(args.database_url), "redis": bool(args.redis_url),
                             "events": args.events, "subscriptions": args.subscriptions, "rate": args.rate},
                    "runs": []}
    if args.calibrate:
        report["calibration_get_api"] = calibrate(workdir, cpus)
        print(flush=True)
    failures: list[str] = []
    results: dict[str, dict[str, dict]] = {}
    for name in args.runs:
        hang = name == "hang"
        run = Run(args, name, hang, workdir, cpus)
        began = time.monotonic()
        try:
            run.setup()
            run.start_worker()
            print(f"run {name}: receiver pid {run.receiver.pid} (ports {run.ports[0]}…{run.ports[-1]}), "
                  f"worker pid {run.worker.pid}" + (", endpoint 0 hangs" if hang else ""), flush=True)
            run.warm_up()
            phases = {}
            for phase_name in ("paced", "backlog"):
                phase = run.measure(phase_name)
                phase["db"] = run.database_check(phase)
                phases[phase_name] = phase
                print(phase_line(phase, hang), flush=True)
                failures += check(phase, hang)
        finally:
            run.close()
        print(f"  (run took {time.monotonic() - began:.0f} s)\n", flush=True)
        results[name] = phases
        report["runs"].append({"run": name, "phases": {k: _jsonable(v) for k, v in phases.items()}})

    print(summary(results, args))
    verdicts = targets(results, args)
    for line in verdicts:
        print(line)
    missed = [line for line in verdicts if "MISSED" in line]
    report["failures"], report["targets"] = failures, verdicts
    if failures:
        print("\nFAIL (correctness):" + "".join(f"\n  - {failure}" for failure in failures))
    else:
        print("\ncorrectness: every event reached its endpoint (the hanging endpoint's are still queued), "
              "no bad signature, no misrouted delivery")
    return (1 if failures or (args.strict and missed) else 0), report


def check(phase: dict, hang: bool) -> list[str]:
    label = f"{phase['run']}/{phase['phase']}"
    problems = []
    if phase["missing"]:
        problems.append(f"{label}: {phase['missing']} events never reached their endpoint")
    if phase["misrouted"]:
        problems.append(f"{label}: {phase['misrouted']} deliveries reached the wrong endpoint")
    if phase["bad_signatures"]:
        problems.append(f"{label}: {phase['bad_signatures']} requests with a bad signature")
    db_check = phase.get("db") or {}
    statuses = db_check.get("statuses", {})
    if statuses.get("delivered", 0) != phase["healthy_expected"]:
        problems.append(f"{label}: database has {statuses} for the {phase['healthy_expected']} healthy deliveries")
    if hang:
        queued = sum(db_check.get("hang_statuses", {}).values())
        if queued != phase["hang_events"]:
            problems.append(f"{label}: {phase['hang_events']} events for the hanging endpoint, {queued} queued")
    return problems


def summary(results: dict, args) -> str:
    lines = ["summary (deliveries/s from first to last receipt of the phase; latency of the paced phase):",
             f"  {'run / phase':<18} {'endpoints':<14} {'delivered':>11} {'deliv./s':>9} {'per endp.':>9} "
             f"{'p50':>9} {'p99':>9} {'worker cpu':>10}  note"]
    healthy = results.get("healthy", {})
    for name, phases in results.items():
        for phase_name, phase in phases.items():
            endpoints = f"{args.subscriptions - 1} of {args.subscriptions}" if name == "hang" else f"{args.subscriptions}"
            p50 = ms(phase["p50"]) if phase_name == "paced" else "-"
            p99 = ms(phase["p99"]) if phase_name == "paced" else "-"
            cpu = phase["cpu"]["worker"]
            note = ""
            if name == "hang":
                same = healthy.get(phase_name)
                if same:
                    note = (f"healthy run: {same['per_endpoint_per_s']:.1f}/s per endpoint"
                            + (f", p50 {ms(same['p50'])}, p99 {ms(same['p99'])}" if phase_name == "paced" else ""))
                note += f"; endpoint 0: {phase['hang_attempts']} attempts"
            lines.append(
                f"  {name + ' / ' + phase_name:<18} {endpoints:<14} {phase['received']:>5}/{phase['healthy_expected']:<5} "
                f"{phase['deliveries_per_s']:>9.0f} {phase['per_endpoint_per_s']:>9.1f} {p50:>9} {p99:>9} "
                f"{'n/a' if cpu is None else f'{cpu * 100:.0f}%':>10}  {note}")
    return "\n".join(lines)


def targets(results: dict, args) -> list[str]:
    out = ["", f"targets (one worker): ≥ {TARGET_RATE:g} deliveries/s, paced p50 < {TARGET_P50 * 1000:g} ms; "
               "with one endpoint hanging the others keep their rate"]
    healthy = results.get("healthy", {})
    if "paced" in healthy:
        paced = healthy["paced"]
        wanted = min(TARGET_RATE, args.rate) * 0.98
        ok = paced["deliveries_per_s"] >= wanted and paced["complete"]
        out.append(f"  paced {args.rate:g}/s offered: {paced['deliveries_per_s']:.0f} deliveries/s "
                   f"{'met' if ok else 'MISSED'}; p50 {ms(paced['p50'])} "
                   f"{'met' if paced['p50'] is not None and paced['p50'] < TARGET_P50 else 'MISSED'}")
    if "backlog" in healthy:
        backlog = healthy["backlog"]
        ok = backlog["deliveries_per_s"] >= TARGET_RATE
        out.append(f"  backlog drain: {backlog['deliveries_per_s']:.0f} deliveries/s {'met' if ok else 'MISSED'}")
    hang = results.get("hang", {})
    for phase_name in ("paced", "backlog"):
        if phase_name in hang and phase_name in healthy:
            ratio = hang[phase_name]["per_endpoint_per_s"] / max(1e-9, healthy[phase_name]["per_endpoint_per_s"])
            ok = ratio >= 0.9 and hang[phase_name]["complete"]
            caveat = ""
            if phase_name == "paced" and healthy[phase_name]["deliveries_per_s"] < min(TARGET_RATE, args.rate) * 0.98:
                caveat = " — the healthy run did not keep up either: this compares capacity, not isolation"
            out.append(f"  hang / {phase_name}: the other endpoints at {ratio * 100:.0f}% of their healthy-run rate "
                       f"per endpoint {'met' if ok else 'MISSED'} (≥ 90%){caveat}")
    return out


def _jsonable(phase: dict) -> dict:
    def convert(value):
        if isinstance(value, float):
            return round(value, 6)
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, tuple | list):
            return [convert(v) for v in value]
        return value

    return convert(phase)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Webhook delivery benchmark of one `cortex worker` process (local receiver process).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=5000, help="events (= deliveries) per phase")
    parser.add_argument("--subscriptions", type=int, default=10, help="endpoints: projects with one subscription each")
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="events/s offered in the paced phase")
    parser.add_argument("--runs", default="healthy,hang",
                        help="comma-separated: healthy (all endpoints answer), hang (endpoint 0 hangs)")
    parser.add_argument("--hang", action="store_const", const="hang", dest="only_hang",
                        help="only the run with endpoint 0 hanging (same as --runs hang)")
    parser.add_argument("--hang-seconds", type=float, default=HANG_TIMEOUT + 3.0,
                        help="how long the hanging endpoint holds each request (> the worker timeout)")
    parser.add_argument("--database-url", help="a postgresql:// server to create <name>_healthy/<name>_hang on; "
                                               "default: SQLite in a temporary directory")
    parser.add_argument("--redis-url", help="REDIS_URL for the worker")
    parser.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                        help="skip the GET /api calibration row")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed too")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the worker during each phase into DIR (raw format)")
    parser.add_argument("--py-spy", default="/tmp/spy/bin/py-spy", help="py-spy executable for --profile")
    parser.add_argument("--set", dest="worker_settings", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment setting of the worker (repeatable), e.g. CORTEX_WEBHOOK_POLL_INTERVAL=0.02")
    parser.add_argument("--worker-command", help="run this instead of `python -m cortex.cli worker` (experiments: "
                                                 "it must print a line 'cortex worker: running … webhooks …' when ready)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) and print it")
    # the receiver subprocess
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--secrets", help=argparse.SUPPRESS)
    parser.add_argument("--hang-endpoints", default="", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.receiver:
        return receiver(args)
    args.runs = ["hang"] if args.only_hang else [r.strip() for r in args.runs.split(",") if r.strip()]
    if not args.runs or any(r not in ("healthy", "hang") for r in args.runs):
        print("bench: --runs takes healthy and/or hang", file=sys.stderr)
        return 2
    if args.events < 1 or args.rate <= 0 or args.subscriptions < 2 or args.hang_seconds <= HANG_TIMEOUT:
        print(f"bench: --events >= 1, --rate > 0, --subscriptions >= 2, --hang-seconds > {HANG_TIMEOUT}",
              file=sys.stderr)
        return 2
    try:
        args.worker_settings = dict(item.split("=", 1) for item in args.worker_settings)
    except ValueError:
        print("bench: --set takes NAME=VALUE", file=sys.stderr)
        return 2
    if args.profile and not os.access(args.py_spy, os.X_OK):
        print(f"bench: --profile needs py-spy at {args.py_spy} (--py-spy PATH)", file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, ROOT)
    import signal

    from _loadgen import run_in_workdir

    def on_sigterm(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    return run_in_workdir(lambda workdir: run_bench(args, workdir), prefix="cortex-bench-webhooks-",
                          as_json=args.json, stopped="subprocesses stopped", keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
