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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _loadgen  # noqa: E402 - safe before the patch: it imports neither socket, threading nor ssl

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


def seed_projects(user, count: int, label: str, prepare=None) -> list[dict]:
    """``count`` projects of ``user``, each with its secret cached and one active session (``prepare(project)``
    adds more to each); ``[{"id", "appId", "secret", "session"}]`` (also tools/bench_plugins.py)."""
    from models.identity import create_project
    from models.sessions import Session
    from models.settings import cached_project_secret, sync_project_secret

    seeded = []
    for number in range(count):
        project, _secret = create_project(user, f"{label} {number:02d}")
        sync_project_secret(project)
        session = Session.create(project=project.id, tenant_id=user.tenant_id, external_room_id=f"room-{number}",
                                 title=f"Bench session {number:02d}", created_by_user_id=user.id, status="active")
        if prepare is not None:
            prepare(project)
        seeded.append({"id": project.id, "appId": project.app_id, "secret": cached_project_secret(project),
                       "session": session.id})
    return seeded


def serve(args) -> int:
    """The real app with the engines of ``cortex serve``; seeds projects; prints {"port", "pid", "token", "projects"}."""
    _loadgen.start_server_process(args.cpu)

    import gevent

    from models.base import db

    def setting(name, default=""):
        return _loadgen.server_setting(ENV_PREFIX, name, default)

    app, settings = _loadgen.cortex_app(args, redis_url=setting("REDIS_URL"))
    with db.connection_context():
        user = _loadgen.bench_user()
        seeded = seed_projects(user, int(setting("PROJECTS", "20")), "Ingest bench")
        backlog = int(setting("DELETE_BACKLOG", "0"))
        if backlog:
            seeded[0]["subscription"] = seed_backlog(app, user, seeded[0]["id"], backlog)
    gevent.spawn(write_commit_stats, os.path.join(args.data_dir, COMMIT_STATS))
    return _loadgen.serve_app(app, settings, {"projects": seeded}, user=user, engines=setting("ENGINES", "1") == "1",
                              profile=setting("PROFILE") or None)


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
    return signed_request(project, event_type, action, data, sign, now_text())


def signed_request(project: dict, event_type: str, action: str, data: dict, sign, timestamp: str) -> bytes:
    """A signed POST /api/events/ingest of one event with this payload, as bytes (also tools/bench_plugins.py)."""
    session = project["session"]
    body = json.dumps({"type": event_type, "source": "voice:server", "resourceId": f"session:{session}",
                       "payload": {"action": action, "data": data}}, separators=(",", ":")).encode()
    head = (
        f"POST /api/events/ingest HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: cortex-bench\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"X-Project-Id: {project['id']}\r\nX-Timestamp: {timestamp}\r\n"
        f"X-Signature: {sign(project['secret'], timestamp, body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def run_row(label, port, projects, args, *, rate, server_pid, counter):
    """Send signed events for WARMUP + duration seconds; a _loadgen.Result with 201 latencies and 429 counts."""
    from datetime import UTC, datetime

    from cortex.events.ingest import sign

    def now_text():
        return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def next_request(index):
        counter["n"] += 1
        return ingest_request(projects[index % len(projects)], args.event, counter["n"], sign, now_text)

    result = _loadgen.Result(label.split(" ")[0], label, args.duration, args.connections, args.timeout)
    result.extra.update(accepted_201=0, limited_429=0, offered_rate=rate)
    _loadgen.request_loop(result, port, next_request, rate=rate, server_pid=server_pid, ok_status=201,
                          counted={429: "limited_429"}, counter=counter)
    result.extra["accepted_201"] = result.ok
    return result


DELETE_P99_TARGET_MS = 250.0


def delete_row(server, projects, token, args, counter, row):
    """Paced ingest while ``DELETE …/webhooks/subscriptions/{id}`` fails a backlog of ``--delete-backlog`` pending
    deliveries (started at the beginning of the measured window); the row's result, with the DELETE's answer and
    duration in ``extra``."""
    from time import perf_counter

    import gevent

    from models.webhooks import DELETE_BATCH

    project = projects[0]
    path = f"/api/projects/{project['id']}/webhooks/subscriptions/{project['subscription']}"
    raw = _loadgen.build_request(path, token, method="DELETE")
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

    return (
        f"{_loadgen.fmt_row(result.label, result, 44)}\n"
        f"  events/s accepted {result.rps:.0f} (offered {result.extra['offered_rate'] or 'unpaced'}); "
        f"201: {result.extra['accepted_201']}  429: {result.extra['limited_429']}  "
        f"events per transaction (group commit, warm-up included): {result.extra.get('events_per_transaction')}"
    )


def stored_messages(port: int, token: str, projects: list, timeout: float) -> int:
    """How many messages the server's transcripts hold across the seeded sessions."""

    return sum(len(_loadgen.get_json(port, token, f"/api/projects/{project['id']}/sessions/{project['session']}"
                                              "/messages", timeout))
               for project in projects)


def run_bench(args, workdir: str, cpus: tuple, pinning: str) -> tuple[int, dict]:

    meta = _loadgen.print_header(args, pinning, "Cortex signed-ingest benchmark (one server process)",
                                 projects=args.projects, event=args.event, rate=args.rate, redis=bool(args.redis_url),
                                 engines=not args.no_engines)
    print(f"ingest    {args.projects} projects, {args.event}, redis {'on' if args.redis_url else 'off'}, "
          f"engines {'off' if args.no_engines else 'on (every engine cortex serve starts: cortex.engines.REGISTRY)'}", flush=True)
    server = _loadgen.bench_server(args, os.path.abspath(__file__), workdir, cpus, ENV_PREFIX, PROJECTS=args.projects,
                                   DELETE_BACKLOG=args.delete_backlog)
    rows, failures = [], []
    counter = {"n": 0, "accepted": 0, "timeouts": 0}
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
            _loadgen.calibrate(server, args, meta)
    finally:
        server.stop()
    return _loadgen.verdict("ingest", meta, rows, failures, f"target ≥ {TARGET:g} events/s accepted without 429 at "
                            f"{args.rate / args.projects:g}/s per project")


def build_parser() -> argparse.ArgumentParser:
    parser = _loadgen.bench_parser("Signed-ingest benchmark of one Cortex server process (stdlib + gevent load "
                                   "generator).")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per row (after 1 s warm-up)")
    parser.add_argument("--rate", type=float, default=TARGET, help="events/s offered in total in the paced row")
    parser.add_argument("--projects", type=int, default=20, help="projects the events are spread over")
    parser.add_argument("--connections", type=int, default=40, help="keep-alive connections (spread over projects)")
    parser.add_argument("--event", default="message.created", help="event type (message.created or a pass-through)")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-request timeout in seconds")
    parser.add_argument("--no-saturate", dest="saturate", action="store_false", help="skip the unpaced row")
    parser.add_argument("--delete-backlog", type=int, default=0, metavar="N",
                        help="also: a paced row while a webhook subscription with N pending deliveries is deleted "
                             f"(target: ingest p99 < {DELETE_P99_TARGET_MS:g} ms meanwhile)")
    _loadgen.add_server_options(parser, redis_help="share the rate-limit counter through Redis (as REDIS_URL does)",
                                engines_help="serve without the live event dispatcher")
    return parser


def invalid_options(args) -> str | None:
    if args.duration <= 0 or args.rate <= 0 or args.projects < 1 or args.connections < args.projects:
        return "--duration and --rate must be > 0, --projects >= 1, --connections >= --projects"
    return None


def main(argv=None) -> int:
    return _loadgen.bench_main(build_parser(), argv, serve=serve, body=run_bench, prefix="cortex-bench-ingest-",
                               invalid=invalid_options)


if __name__ == "__main__":
    sys.exit(main())
