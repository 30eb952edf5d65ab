#!/usr/bin/env python3
"""Benchmark signed ingest (POST /api/events/ingest) on one Cortex server process: events/s, p50/p99 latency.

The server is the real thing, started like ``tools/bench_http.py`` does (a subprocess that calls
``cortex.http.serve.patch()`` first, builds the app with ``cortex.http.app.create_app``, migrates a fresh database and
serves through ``cortex.http.serve.make_server``), with the engines ``cortex serve`` runs (the live event dispatcher
and fan-out) unless ``--no-engines``. It seeds ``--projects`` (20) projects, each with its secret cached (as
``POST …/settings/sync-secret`` does) and one active session, and prints their ids and secrets.

The load generator is this process (``tools/_loadgen.py``: gevent greenlets on raw keep-alive sockets). Every
request is signed afresh (``cortex.events.ingest.sign``: HMAC-SHA256 of the X-Timestamp string and the exact body) for
one project; ``--connections`` connections are spread evenly over the projects. Rows:

  (1) paced: ``--rate`` (1,000) events/s offered in total, i.e. ``rate / projects`` per project (50/s: below the
      100/s per-project limit, so every answer must be 201 — the run fails on any 429 or error);
  (2) saturation (``--saturate``, on by default): the same connections without pacing, to show the capacity;
      above ``100 × projects`` events/s the rate limit answers 429 by design (counted, not an error);
  (3) calibration (``--no-calibrate`` skips it): ``GET /api`` for 5 s, to compare the machine with docs/performance.md's.

Events are ``message.created`` by default (materialised: session lookup, sender participant found or created
from a pool of 10 users per project, a message row and its event; each with a unique ``data.id``), or any
pass-through type with ``--event`` (e.g. ``image.ready``: the event log only). Afterwards the transcripts are
read back: the number of stored messages must equal the number of 201s.

Usage:
    tools/bench_ingest.py [--duration 10] [--rate 1000] [--projects 20] [--connections 40] [--event message.created]
                          [--no-saturate] [--no-engines] [--no-calibrate] [--json] [--delete-backlog 50000]
                          [--profile server.pstats]
                          [--database-url postgresql://postgres@127.0.0.1:5432/bench] [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

# As in bench_http.py: nothing that pulls in socket/threading/ssl before the server subprocess has patched.
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
USERS_PER_PROJECT = 10
TARGET = 1000.0  # events/s the issue asks one process to accept
ENV_PREFIX = "BENCH_INGEST_"  # how the parent passes settings to the server subprocess (ServerProcess inherits env)


COMMIT_STATS = "group-commit.json"  # the server's group-commit counters, rewritten every 0.2 s


# ----------------------------------------------------------------- server subprocess


def seed_backlog(app, user, project_id: str, count: int) -> str:
    """A webhook subscription of the project with ``count`` pending deliveries (due in a day: the webhook engine
    leaves them alone); its id."""
    from datetime import timedelta

    from cortex.http.routing import event_types
    from models.base import new_id, transaction, utcnow
    from models.identity import Project
    from models.webhooks import WebhookEvent, create_subscription

    project = Project.get_by_id(project_id)
    sub = create_subscription(project, {"url": "https://hooks.bench.invalid/in", "secret": "bench-secret",
                                        "events": ["*"]}, event_types(app.extensions["cortex"].spec), limit=100)
    due = utcnow() + timedelta(days=1)
    for start in range(0, count, 1000):
        with transaction():
            WebhookEvent.insert_many([
                {"id": new_id(), "subscription_id": sub.id, "event_seq": number, "event_id": new_id(),
                 "tenant_id": user.tenant_id, "project_id": project_id, "event_type": "bench.event", "body": "{}",
                 "status": "pending", "next_attempt_at": due, "created_at": due, "updated_at": due}
                for number in range(start + 1, min(count, start + 1000) + 1)]).execute()
    return sub.id


def write_commit_stats(path: str) -> None:
    """Keep the ingest group-commit counters in a file the parent reads around each row."""
    import gevent

    from cortex.events.ingest import group_commit, message_commit

    while True:
        stats = {"transactions": group_commit.batches + message_commit.batches,
                 "events": group_commit.items + message_commit.items}
        with open(path + ".tmp", "w") as file:
            json.dump(stats, file)
        os.replace(path + ".tmp", path)
        gevent.sleep(0.2)


def read_commit_stats(workdir: str) -> dict:
    try:
        with open(os.path.join(workdir, "cortex-data", COMMIT_STATS)) as file:
            return json.load(file)
    except (OSError, ValueError):
        return {"transactions": 0, "events": 0}


def serve(args) -> int:
    """The real app with the engines of ``cortex serve``; seeds projects; prints {"port", "pid", "token", "projects"}."""
    from bench_http import exit_with_parent, pin_to_cpu, raise_fd_limit

    pin_to_cpu(args.cpu)
    raise_fd_limit()
    from cortex.http.serve import patch

    patch()  # first: before anything imports socket, threading or ssl

    import secrets
    import signal

    import gevent
    from gevent.event import Event

    from cortex.http import security
    from cortex.http.app import create_app
    from cortex.http.serve import make_server
    from cortex.settings import Settings
    from models.base import db
    from models.database import upgrade
    from models.identity import Project, Tenant, User, create_project, create_user
    from models.sessions import Session
    from models.settings import cached_project_secret, sync_project_secret

    os.makedirs(args.data_dir, exist_ok=True)
    projects = int(os.environ.get(f"{ENV_PREFIX}PROJECTS", "20"))
    settings = Settings.from_env(
        env={"CORTEX_LOG_LEVEL": "WARNING"},  # not os.environ: a DATABASE_URL in the shell must not leak in
        data_dir=args.data_dir,
        database_url=args.database_url or None,
        secret_key=secrets.token_urlsafe(48),
        redis_url=os.environ.get(f"{ENV_PREFIX}REDIS_URL") or None,
    )
    app = create_app(settings)
    upgrade()
    seeded = []
    with db.connection_context():
        user = create_user(f"bench-{secrets.token_hex(6)}@bench.invalid", secrets.token_urlsafe(16), "Bench User")
        for number in range(projects):
            project, _secret = create_project(user, f"Ingest bench {number:02d}")
            sync_project_secret(project)
            session = Session.create(project=project.id, tenant_id=user.tenant_id, external_room_id=f"room-{number}",
                                     title=f"Bench session {number:02d}", created_by_user_id=user.id, status="active")
            seeded.append({"id": project.id, "appId": project.app_id, "secret": cached_project_secret(project),
                           "session": session.id})
        backlog = int(os.environ.get(f"{ENV_PREFIX}DELETE_BACKLOG", "0"))
        if backlog:
            seeded[0]["subscription"] = seed_backlog(app, user, seeded[0]["id"], backlog)
    token = security.issue_access_token(user.id, user.tenant_id)
    engines = None
    if os.environ.get(f"{ENV_PREFIX}ENGINES", "1") == "1":
        from cortex.engines import SERVE, start_engines

        engines = start_engines(SERVE, settings)  # as `cortex serve` runs them (no webhook subscription here)
        app.extensions["cortex"].fanout = engines.fanout
    server = make_server(app, HOST, 0)
    server.start()
    stop = Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    exit_with_parent(stop.set)
    profile_path = os.environ.get(f"{ENV_PREFIX}PROFILE")
    profiler = None
    if profile_path:  # --profile: cProfile the serving process (all greenlets) into a pstats file
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    gevent.spawn(write_commit_stats, os.path.join(args.data_dir, COMMIT_STATS))
    print(json.dumps({"port": server.server_port, "pid": os.getpid(), "token": token, "projects": seeded}), flush=True)
    try:
        stop.wait()
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_path)
        server.stop(timeout=1)
        if engines is not None:
            engines.stop()
        try:  # leave a reused (PostgreSQL) database as we found it
            with db.connection_context():
                from models.events import DomainEvent

                DomainEvent.delete().where(DomainEvent.tenant_id == user.tenant_id).execute()
                User.delete().where(User.id == user.id).execute()
                Project.delete().where(Project.tenant == user.tenant_id).execute()  # cascades to the rest
                Tenant.delete().where(Tenant.id == user.tenant_id).execute()
        except Exception as exc:  # best effort on the way out
            print(f"bench: could not remove the seeded tenant {user.tenant_id}: {exc}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------- load generator (parent)


def ingest_request(project: dict, event_type: str, number: int, sign, now_text) -> bytes:
    """One signed POST /api/events/ingest, as bytes."""
    session = project["session"]
    if event_type == "message.created":
        data = {"sessionId": session, "userId": f"user-{number % USERS_PER_PROJECT}",
                "senderName": f"Player {number % USERS_PER_PROJECT}", "content": f"message number {number}",
                "id": f"bench-{number}"}
        action = "created"
    else:
        data = {"sessionId": session, "number": number}
        action = "occurred"
    body = json.dumps({"type": event_type, "source": "voice:server", "resourceId": f"session:{session}",
                       "payload": {"action": action, "data": data}}, separators=(",", ":")).encode()
    timestamp = now_text()
    head = (
        f"POST /api/events/ingest HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: cortex-bench\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"X-Project-Id: {project['id']}\r\nX-Timestamp: {timestamp}\r\n"
        f"X-Signature: {sign(project['secret'], timestamp, body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def run_row(label, port, projects, args, *, rate, server_pid, counter):
    """Send signed events for WARMUP + duration seconds; a _loadgen.Result with 201 latencies and 429 counts."""
    import math
    from datetime import UTC, datetime
    from time import perf_counter

    import _loadgen
    import gevent

    from cortex.events.ingest import sign

    def now_text():
        return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    result = _loadgen.Result(label.split(" ")[0], label, args.duration, args.connections, args.timeout)
    result.extra.update(accepted_201=0, limited_429=0, offered_rate=rate)
    start = perf_counter()
    window_start = start + _loadgen.WARMUP
    deadline = window_start + args.duration
    marks = {}
    interval = args.connections / rate if rate else 0.0  # seconds between two sends of one connection

    def mark(name):
        marks[name] = (perf_counter(), _loadgen.process_cpu_seconds(server_pid), _loadgen.own_cpu_seconds())

    def worker(index):
        project = projects[index % len(projects)]
        connection = None
        sent = 0
        offset = index / args.connections * interval  # spread the connections' sends over the interval
        while perf_counter() < deadline:
            if interval:
                due = start + offset + sent * interval
                wait = due - perf_counter()
                if wait > 0:
                    gevent.sleep(wait)
                    if perf_counter() >= deadline:
                        break
            sent += 1
            counter["n"] += 1
            raw = ingest_request(project, args.event, counter["n"], sign, now_text)
            began = perf_counter()
            try:
                if connection is None:
                    connection = _loadgen.HttpConnection(port, args.timeout)
                status, _body, keep = connection.request(raw)
            except TimeoutError:
                if perf_counter() >= window_start:
                    result.latencies.append(math.inf)
                    result.errors["timeout"] += 1
                _loadgen._close(connection)
                connection = None
                continue
            except (OSError, ValueError) as exc:
                if perf_counter() >= window_start:
                    result.errors[type(exc).__name__] += 1
                _loadgen._close(connection)
                connection = None
                gevent.sleep(0.01)
                continue
            ended = perf_counter()
            if status == 201:
                counter["accepted"] += 1
            if ended >= window_start:
                if status == 201:
                    result.latencies.append(ended - began)
                    if ended < deadline:
                        result.ok += 1
                        result.extra["accepted_201"] += 1
                elif status == 429:
                    result.extra["limited_429"] += ended < deadline
                else:
                    result.errors[f"HTTP {status}"] += 1
            if not keep:
                _loadgen._close(connection)
                connection = None
        _loadgen._close(connection)

    greenlets = [gevent.spawn_later(_loadgen.WARMUP, mark, "start"),
                 gevent.spawn_later(_loadgen.WARMUP + args.duration, mark, "end")]
    greenlets += [gevent.spawn(worker, index) for index in range(args.connections)]
    gevent.joinall(greenlets, timeout=_loadgen.WARMUP + args.duration + args.timeout + 5)
    gevent.killall(greenlets, timeout=5)
    if "start" in marks and "end" in marks:
        (t0, s0, l0), (t1, s1, l1) = marks["start"], marks["end"]
        if s0 is not None and s1 is not None:
            result.server_cpu = (s1 - s0) / (t1 - t0)
        result.loadgen_cpu = (l1 - l0) / (t1 - t0)
    return result


DELETE_P99_TARGET_MS = 250.0


def delete_row(server, projects, token, args, counter, row):
    """Paced ingest while ``DELETE …/webhooks/subscriptions/{id}`` fails a backlog of ``--delete-backlog`` pending
    deliveries (started at the beginning of the measured window); the row's result, with the DELETE's answer and
    duration in ``extra``."""
    from time import perf_counter

    import _loadgen
    import gevent

    from models.webhooks import DELETE_BATCH

    project = projects[0]
    path = f"/api/projects/{project['id']}/webhooks/subscriptions/{project['subscription']}"
    raw = (f"DELETE {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\n"
           f"User-Agent: cortex-bench\r\n\r\n").encode()
    outcome = {}

    def delete():
        began = perf_counter()
        status, body = _loadgen.fetch(server.port, raw, 600.0)
        outcome.update(status=status, seconds=round(perf_counter() - began, 2), body=body[:200].decode())

    deleter = gevent.spawn_later(_loadgen.WARMUP, delete)
    result = row(f"paced ({args.rate:g}/s) while a backlog of {args.delete_backlog} is deleted", args.rate)
    deleter.join(600)
    result.extra["delete"] = outcome
    print(row_line(result), flush=True)
    print(f"  DELETE …/subscriptions/{{id}} answered {outcome.get('status')} after {outcome.get('seconds')} s "
          f"(the backlog failed in batches of {DELETE_BATCH}, each its own transaction, pausing as long as it "
          f"took)", flush=True)
    if outcome.get("status") != 200:
        raise _loadgen.BenchError(f"the DELETE answered {outcome}")
    return result


def row_line(result) -> str:
    import _loadgen

    return (
        f"{_loadgen.fmt_row(result.label, result, 44)}\n"
        f"  events/s accepted {result.rps:.0f} (offered {result.extra['offered_rate'] or 'unpaced'}); "
        f"201: {result.extra['accepted_201']}  429: {result.extra['limited_429']}  "
        f"events per transaction (group commit, warm-up included): {result.extra.get('events_per_transaction')}"
    )


def stored_messages(port: int, token: str, projects: list, timeout: float) -> int:
    """How many messages the server's transcripts hold across the seeded sessions."""
    import _loadgen

    total = 0
    for project in projects:
        raw = _loadgen.build_request(f"/api/projects/{project['id']}/sessions/{project['session']}/messages", token)
        status, body = _loadgen.fetch(port, raw, max(timeout, 30.0))
        if status != 200:
            raise _loadgen.BenchError(f"GET …/messages answered {status}: {body[:200]!r}")
        total += len(json.loads(body))
    return total


def run_bench(args, workdir: str, cpus: tuple, pinning: str) -> tuple[int, dict]:
    import _loadgen

    args.compare = False
    lines, meta = _loadgen.header(args, pinning, "Cortex signed-ingest benchmark (one server process)")
    meta.update(projects=args.projects, event=args.event, rate=args.rate, redis=bool(args.redis_url),
                engines=not args.no_engines)
    print("\n".join(lines), flush=True)
    print(f"ingest    {args.projects} projects, {args.event}, redis {'on' if args.redis_url else 'off'}, "
          f"engines {'off' if args.no_engines else 'on (every engine cortex serve starts: cortex.engines.REGISTRY)'}", flush=True)
    os.environ[f"{ENV_PREFIX}PROJECTS"] = str(args.projects)
    os.environ[f"{ENV_PREFIX}REDIS_URL"] = args.redis_url or ""
    os.environ[f"{ENV_PREFIX}ENGINES"] = "0" if args.no_engines else "1"
    os.environ[f"{ENV_PREFIX}DELETE_BACKLOG"] = str(args.delete_backlog)
    os.environ[f"{ENV_PREFIX}PROFILE"] = os.path.abspath(args.profile) if args.profile else ""
    server = _loadgen.ServerProcess("cortex", os.path.abspath(__file__), workdir, cpus[0], args.database_url)
    rows, failures = [], []
    counter = {"n": 0, "accepted": 0}
    try:
        server.start()
        projects, token = server.info["projects"], server.info["token"]
        print(f"server    pid {server.pid} on {HOST}:{server.port}; {len(projects)} projects with cached secrets",
              flush=True)
        print()
        def row(label, rate):
            before = read_commit_stats(workdir)
            result = run_row(label, server.port, projects, args, rate=rate, server_pid=server.pid, counter=counter)
            time.sleep(0.3)  # the server rewrites its counters every 0.2 s
            after = read_commit_stats(workdir)
            transactions = after["transactions"] - before["transactions"]
            result.extra["events_per_transaction"] = (
                round((after["events"] - before["events"]) / transactions, 1) if transactions else None)
            return result

        paced = row(f"paced ({args.rate:g}/s offered, {args.rate / args.projects:g}/s per project)", args.rate)
        rows.append(paced)
        print(row_line(paced), flush=True)
        if paced.extra["limited_429"]:
            failures.append(f"paced row: {paced.extra['limited_429']} answers were 429")
        if paced.errors:
            failures.append(f"paced row: errors {dict(paced.errors)}")
        if paced.rps < min(TARGET, args.rate) * 0.98:
            failures.append(f"paced row: {paced.rps:.0f} events/s accepted, below {min(TARGET, args.rate):g}/s")
        if args.delete_backlog:
            deleted = delete_row(server, projects, token, args, counter, row)
            rows.append(deleted)
            if deleted.errors or deleted.extra["limited_429"]:
                failures.append(f"delete row: errors {dict(deleted.errors)}, 429: {deleted.extra['limited_429']}")
            if (deleted.percentile(99) or 0) * 1000 >= DELETE_P99_TARGET_MS:
                failures.append(f"delete row: ingest p99 {deleted.percentile(99) * 1000:.0f} ms while the backlog "
                                f"was failed (target < {DELETE_P99_TARGET_MS:g} ms)")
        if args.saturate:
            saturated = row("saturation (unpaced)", 0.0)
            rows.append(saturated)
            print(row_line(saturated), flush=True)
            if saturated.errors:
                failures.append(f"saturation row: errors {dict(saturated.errors)}")
        if args.event == "message.created":
            stored = stored_messages(server.port, token, projects, args.timeout)
            unanswered = sum(row.errors.get("timeout", 0) for row in rows)  # may or may not have been stored
            print(f"\ncheck     {stored} messages stored, {counter['accepted']} answers 201 (all rows, warm-up "
                  f"included), {unanswered} timed out")
            if not counter["accepted"] <= stored <= counter["accepted"] + unanswered:
                failures.append(f"{stored} messages stored but {counter['accepted']} ingests answered 201")
        if args.calibrate:
            health = _loadgen.measure("health", "GET /api (calibration, no database)", server.port,
                                      _loadgen.build_request("/api"), connections=args.connections,
                                      duration=min(args.duration, 5.0), timeout=args.timeout, server_pid=server.pid)
            print(f"\n{_loadgen.fmt_row(health.label, health, 44)}\n  (docs/performance.md figure on a quiet machine: ~4,950 "
                  "req/s; a much lower figure means the CPU is shared with other work)")
            meta["calibration_get_api"] = health.as_dict()
    finally:
        server.stop()
    verdict = "PASS" if not failures else "FAIL"
    print(f"\n{verdict}: target ≥ {TARGET:g} events/s accepted without 429 at {args.rate / args.projects:g}/s per project"
          + "".join(f"\n  - {failure}" for failure in failures))
    report = {"mode": "ingest", "meta": meta, "rows": [row.as_dict() for row in rows], "failures": failures}
    return (0 if not failures else 1), report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Signed-ingest benchmark of one Cortex server process (stdlib + gevent load generator).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per row (after 1 s warm-up)")
    parser.add_argument("--rate", type=float, default=TARGET, help="events/s offered in total in the paced row")
    parser.add_argument("--projects", type=int, default=20, help="projects the events are spread over")
    parser.add_argument("--connections", type=int, default=40, help="keep-alive connections (spread over projects)")
    parser.add_argument("--event", default="message.created", help="event type (message.created or a pass-through)")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-request timeout in seconds")
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory")
    parser.add_argument("--redis-url", help="share the rate-limit counter through Redis (as REDIS_URL does)")
    parser.add_argument("--no-saturate", dest="saturate", action="store_false", help="skip the unpaced row")
    parser.add_argument("--delete-backlog", type=int, default=0, metavar="N",
                        help="also: a paced row while a webhook subscription with N pending deliveries is deleted "
                             f"(target: ingest p99 < {DELETE_P99_TARGET_MS:g} ms meanwhile)")
    parser.add_argument("--no-engines", action="store_true", help="serve without the live event dispatcher")
    parser.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                        help="skip the GET /api row that shows how much CPU the machine gives the server")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--profile", help="write a cProfile (pstats) of the server process to this file")
    parser.add_argument("--serve", nargs="?", const="cortex", help=argparse.SUPPRESS)  # ServerProcess: --serve cortex
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve:  # the server subprocess (ServerProcess starts us as ``--serve cortex --data-dir …``)
        return serve(args)
    if args.duration <= 0 or args.rate <= 0 or args.projects < 1 or args.connections < args.projects:
        print("bench: --duration and --rate must be > 0, --projects >= 1, --connections >= --projects", file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, ROOT)
    import signal

    import _loadgen
    import gevent
    from bench_http import raise_fd_limit

    raise_fd_limit()

    def on_sigterm(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    hub = gevent.get_hub()
    hub.NOT_ERROR = (*hub.NOT_ERROR, KeyboardInterrupt)
    cpus, pinning = _loadgen.split_cpus()
    return _loadgen.run_in_workdir(lambda workdir: run_bench(args, workdir, cpus, pinning),
                                   prefix="cortex-bench-ingest-", as_json=args.json, stopped="server stopped")


if __name__ == "__main__":
    sys.exit(main())
