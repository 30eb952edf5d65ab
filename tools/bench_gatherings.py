#!/usr/bin/env python3
"""Benchmark joins by code (POST /api/projects/{id}/gatherings/join) on one Cortex server process.

The server is the real thing, started like ``tools/bench_ingest.py`` does (a subprocess pinned to one CPU that calls
``cortex.http.serve.patch()`` first, builds the app with ``cortex.http.app.create_app``, migrates a fresh database
and serves through ``cortex.http.serve.make_server``), with the engines ``cortex serve`` runs unless
``--no-engines``. It seeds one user (a project admin: its bearer token drives every request) with one project and
``--participants`` participants (``models.participants.create_or_find_participant``, straight in the database).

The load generator is this process (``tools/_loadgen.py``: gevent greenlets on raw keep-alive sockets). The
gatherings themselves are created over HTTP (``POST …/gatherings``, type ``lobby``, 201 with a join code). Rows:

  (1) joins into many gatherings: ``--gatherings`` (500) lobbies with maxMembers 100; ``--connections`` (40)
      connections join back to back (or paced at ``--rate`` joins/s) for ``--duration`` s after a 1 s warm-up. Each
      request seats a participant into a random gathering that still has a free seat, never a participant twice in
      one gathering, so every join takes a real seat: anything but 200 is an error. Target: ≥ 500 joins/s
      accepted. Afterwards the gatherings' memberCount must add up to the number of 200s.
  (2) rush at one gathering: one lobby with maxMembers 100; ``--rush`` (1,000) connections, each for a different
      participant, are opened first and then fire their join at the same moment. Exactly 100 must get 200 and
      the rest 409 (full); ``GET …/gatherings/{id}`` must then show memberCount 100 (and the member list 100
      seated members). Reports the p50/p99 of one join under the rush and how long the whole rush took.
  (3) calibration (``--no-calibrate`` skips it): ``GET /api`` for 5 s, to compare the machine with
      docs/performance.md's.

Usage:
    tools/bench_gatherings.py [--duration 10] [--gatherings 500] [--participants 5000] [--connections 40]
                              [--rate 0] [--rush 1000] [--no-engines] [--no-calibrate] [--json]
                              [--profile server.pstats]
                              [--database-url postgresql://postgres@127.0.0.1:5432/bench] [--redis-url redis://…]
"""

from __future__ import annotations

# As in bench_http.py: nothing that pulls in socket/threading/ssl before the server subprocess has patched.
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _loadgen  # noqa: E402 - safe before the patch: it imports neither socket, threading nor ssl

HOST = "127.0.0.1"
TARGET = 500.0  # joins/s one process must accept
MAX_MEMBERS = 100  # maxMembers of every benchmark gathering (the API's maximum)
RUSH_CONNECT_CONCURRENCY = 200  # rush connections opened at a time (before they all fire together)
ENV_PREFIX = "BENCH_GATHERINGS_"  # how the parent passes settings to the server subprocess (ServerProcess inherits env)
SEED_BATCH = 500  # participants created per transaction


# ----------------------------------------------------------------- server subprocess


def serve(args) -> int:
    """The real app with the engines of ``cortex serve``; seeds a project and its participants; prints
    {"port", "pid", "token", "project", "participants", "seed_s"}."""
    _loadgen.start_server_process(args.cpu)

    from time import perf_counter

    from models.base import db, transaction
    from models.identity import create_project
    from models.participants import create_or_find_participant

    def setting(name, default=""):
        return _loadgen.server_setting(ENV_PREFIX, name, default)

    count = int(setting("PARTICIPANTS", "5000"))
    app, settings = _loadgen.cortex_app(args, redis_url=setting("REDIS_URL"))
    began = perf_counter()
    participants = []
    with db.connection_context():
        user = _loadgen.bench_user()
        project, _secret = create_project(user, "Gatherings bench")
        for start in range(0, count, SEED_BATCH):
            with transaction():  # one transaction per batch; each create is a savepoint inside it
                for number in range(start, min(count, start + SEED_BATCH)):
                    row, _created = create_or_find_participant(project, f"bench-player-{number:06d}",
                                                               f"Player {number}")
                    participants.append(row.id)
    seed_seconds = perf_counter() - began
    info = {"project": project.id, "participants": participants, "seed_s": round(seed_seconds, 2)}
    return _loadgen.serve_app(app, settings, info, user=user, engines=setting("ENGINES", "1") == "1",
                              profile=setting("PROFILE") or None, cleanup=remove_gatherings)


def remove_gatherings(user) -> None:
    """The gatherings (and their members) of the seeded tenant: :func:`_loadgen.remove_tenant` removes the rest."""
    from models.gatherings import Gathering, GatheringMember

    ours = Gathering.select(Gathering.id).where(Gathering.tenant_id == user.tenant_id)
    GatheringMember.delete().where(GatheringMember.gathering_id.in_(ours)).execute()
    Gathering.delete().where(Gathering.tenant_id == user.tenant_id).execute()


# ----------------------------------------------------------------- load generator (parent)


def post_request(path: str, token: str, body: dict) -> bytes:
    """One keep-alive POST with a JSON body, as bytes."""
    return _loadgen.build_request(path, token, method="POST", body=body)


def create_gatherings(port: int, token: str, project: str, count: int, name: str, args) -> list[dict]:
    """``count`` lobbies (maxMembers 100) created over HTTP on up to ``--connections`` connections; their bodies."""
    import gevent

    path = f"/api/projects/{project}/gatherings"
    created: list[dict] = []
    failures: list[str] = []
    numbers = iter(range(count))

    def worker():
        connection = _loadgen.HttpConnection(port, max(args.timeout, 30.0))
        try:
            for number in numbers:
                raw = post_request(path, token, {"name": f"{name} {number:04d}", "type": "lobby",
                                                 "maxMembers": MAX_MEMBERS})
                status, body, keep = connection.request(raw)
                if status != 201:
                    failures.append(f"POST …/gatherings answered {status}: {body[:200]!r}")
                    return
                created.append(json.loads(body))
                if not keep:
                    connection.close()
                    connection = _loadgen.HttpConnection(port, max(args.timeout, 30.0))
        finally:
            connection.close()

    greenlets = [gevent.spawn(worker) for _ in range(min(args.connections, count))]
    gevent.joinall(greenlets, raise_error=True)
    if failures:
        raise _loadgen.BenchError(failures[0])
    for body in created:
        if body.get("maxMembers") != MAX_MEMBERS or body.get("memberCount") != 0 or not body.get("joinCode"):
            raise _loadgen.BenchError(f"POST …/gatherings answered an unexpected body {body!r}")
    return created


class Seats:
    """Which participant takes the next seat of which gathering: a random gathering with a free seat, and in it
    the next participant of a pool walked from a random offset (distinct within one gathering: pool ≥ 100)."""

    def __init__(self, gatherings: list[dict], participants: list[str], seed: int = 1):
        import random

        self.random = random.Random(seed)
        self.participants = participants
        self.open = list(range(len(gatherings)))  # gatherings with a free seat (as far as this process sent)
        self.codes = [g["joinCode"] for g in gatherings]
        self.offsets = [self.random.randrange(len(participants)) for _ in gatherings]
        self.taken = [0] * len(gatherings)

    def next(self) -> tuple[str, str] | None:
        """(join code, participant id) of a fresh seat; None once every seat has been handed out."""
        if not self.open:
            return None
        slot = self.random.randrange(len(self.open))
        index = self.open[slot]
        participant = self.participants[(self.offsets[index] + self.taken[index]) % len(self.participants)]
        self.taken[index] += 1
        if self.taken[index] >= MAX_MEMBERS:
            self.open[slot] = self.open[-1]
            self.open.pop()
        return self.codes[index], participant

    @property
    def handed_out(self) -> int:
        return sum(self.taken)


def joins_row(label, port, token, project, seats: Seats, args, *, server_pid, counter):
    """Join for WARMUP + duration seconds on ``--connections`` connections (paced at ``--rate`` if given); a
    _loadgen.Result whose ok/latencies count the 200s, anything else being an error."""
    path = f"/api/projects/{project}/gatherings/join"
    result = _loadgen.Result("joins_many", label, args.duration, args.connections, args.timeout)
    result.extra.update(accepted_200=0, offered_rate=args.rate or None, gatherings=len(seats.codes),
                        participants=len(seats.participants), seats_exhausted=False)

    def next_request(_index):
        seat = seats.next()
        if seat is None:
            result.extra["seats_exhausted"] = True
            return None
        code, participant = seat
        return post_request(path, token, {"joinCode": code, "participantId": participant})

    _loadgen.request_loop(result, port, next_request, rate=args.rate, server_pid=server_pid, counter=counter)
    result.extra["accepted_200"] = result.ok
    result.extra["seats_handed_out"] = seats.handed_out
    return result


def rush_row(label, port, token, project, participants: list[str], gathering: dict, args, *, server_pid):
    """``--rush`` connections opened first, then all fire their join (one participant each) at the same moment;
    a _loadgen.Result whose latencies are every answered join's, with the 200/409 counts in ``extra``."""
    import math
    from collections import Counter
    from time import perf_counter

    import gevent
    from gevent.event import Event
    from gevent.lock import BoundedSemaphore

    path = f"/api/projects/{project}/gatherings/join"
    raws = [post_request(path, token, {"joinCode": gathering["joinCode"], "participantId": participant})
            for participant in participants[: args.rush]]
    result = _loadgen.Result("rush_one", label, 0.0, args.rush, args.rush_timeout)
    statuses: Counter = Counter()
    connections = [None] * len(raws)
    connected = Event()
    fire = Event()
    gate = BoundedSemaphore(RUSH_CONNECT_CONCURRENCY)
    pending = {"connecting": len(raws)}

    def worker(index):
        try:
            with gate:
                connections[index] = _loadgen.HttpConnection(port, args.rush_timeout)
        except OSError as exc:
            result.errors[f"connect {type(exc).__name__}"] += 1
        finally:
            pending["connecting"] -= 1
            if not pending["connecting"]:
                connected.set()
        fire.wait()
        connection = connections[index]
        if connection is None:
            return
        began = perf_counter()
        try:
            status, _body, _keep = connection.request(raws[index])
        except TimeoutError:
            result.latencies.append(math.inf)
            result.errors["timeout"] += 1
            return
        except (OSError, ValueError) as exc:
            result.errors[type(exc).__name__] += 1
            return
        finally:
            connection.close()
        result.latencies.append(perf_counter() - began)
        statuses[status] += 1
        if status not in (200, 409):
            result.errors[f"HTTP {status}"] += 1

    greenlets = [gevent.spawn(worker, index) for index in range(len(raws))]
    if not connected.wait(_loadgen.SERVER_START_TIMEOUT):
        gevent.killall(greenlets, timeout=5)
        raise _loadgen.BenchError(f"could not open {len(raws)} connections within {_loadgen.SERVER_START_TIMEOUT:g} s")
    gevent.sleep(0.2)  # let the server's accept loop take every connection before the rush
    began = _loadgen.cpu_mark(server_pid)
    fire.set()
    gevent.joinall(greenlets, timeout=args.rush_timeout + 10)
    gevent.killall(greenlets, timeout=5)
    ended = _loadgen.cpu_mark(server_pid)
    result.duration = ended[0] - began[0]
    result.ok = statuses[200]
    _loadgen.set_cpu(result, began, ended)
    result.extra.update(rush=len(raws), accepted_200=statuses[200], full_409=statuses[409],
                        rush_seconds=round(result.duration, 3), gathering=gathering["id"])
    return result


def seated_total(port: int, token: str, project: str, timeout: float) -> tuple[int, int]:
    """(sum of memberCount, number of gatherings) over the project's gatherings, page by page."""
    total, seen, offset = 0, 0, 0
    while True:
        page = _loadgen.get_json(port, token, f"/api/projects/{project}/gatherings?limit=100&offset={offset}",
                                 timeout)
        rows = page["gatherings"]
        total += sum(row["memberCount"] for row in rows)
        seen += len(rows)
        offset += len(rows)
        if not rows or offset >= page["total"]:
            return total, seen


def fmt_ms(result, p: float) -> str:

    return _loadgen.fmt_latency(result.percentile(p), result.timeout)


def joins_line(result) -> str:

    extra = result.extra
    return (
        f"{_loadgen.fmt_row(result.label, result, 44)}\n"
        f"  joins/s accepted (200) {result.rps:.0f} (offered {extra['offered_rate'] or 'unpaced, closed loop'}); "
        f"200 in the window: {extra['accepted_200']}; seats handed out (warm-up included) {extra['seats_handed_out']}"
        f" of {extra['gatherings'] * MAX_MEMBERS}"
    )


def rush_line(result) -> str:
    extra = result.extra
    return (
        f"{result.label:<44} joins {extra['rush']:>5}   p50 {fmt_ms(result, 50):>9}   p99 {fmt_ms(result, 99):>9}"
        f"   {_loadgen.fmt_errors_cpu(result)}\n"
        f"  200: {extra['accepted_200']}  409: {extra['full_409']}  the whole rush took {extra['rush_seconds']:.2f} s "
        f"({extra['rush'] / extra['rush_seconds']:.0f} answers/s)"
    )


def run_bench(args, workdir: str, cpus: tuple, pinning: str) -> tuple[int, dict]:
    participants = max(args.participants, args.rush, MAX_MEMBERS)
    meta = _loadgen.print_header(args, pinning, "Cortex gatherings benchmark: joins by code (one server process)",
                                 gatherings=args.gatherings, participants=participants, rush=args.rush,
                                 rate=args.rate or None, redis=bool(args.redis_url), engines=not args.no_engines)
    print(f"gathering {args.gatherings} lobbies of maxMembers {MAX_MEMBERS} (row 1), {participants} participants, "
          f"rush {args.rush} joins at one lobby (row 2, timeout {args.rush_timeout:g} s); redis "
          f"{'on' if args.redis_url else 'off'}, engines "
          f"{'off' if args.no_engines else 'on (every engine cortex serve starts: cortex.engines.REGISTRY)'}",
          flush=True)
    server = _loadgen.bench_server(args, os.path.abspath(__file__), workdir, cpus, ENV_PREFIX,
                                   PARTICIPANTS=participants)
    rows, failures = [], []
    counter = {"accepted": 0, "timeouts": 0}
    try:
        from time import perf_counter

        server.start()
        token, project, pool = server.info["token"], server.info["project"], server.info["participants"]
        if len(pool) != participants:
            raise _loadgen.BenchError(f"the server seeded {len(pool)} participants, not {participants}")
        print(f"server    pid {server.pid} on {HOST}:{server.port}; seeded {len(pool)} participants in "
              f"{server.info['seed_s']:.1f} s (models.participants.create_or_find_participant)", flush=True)
        began = perf_counter()
        gatherings = create_gatherings(server.port, token, project, args.gatherings, "Bench lobby", args)
        print(f"seed      {len(gatherings)} lobbies created over HTTP (POST …/gatherings → 201) in "
              f"{perf_counter() - began:.1f} s", flush=True)
        print()

        # (1) joins into many gatherings
        seats = Seats(gatherings, pool)
        label = f"joins into {args.gatherings} gatherings ({'paced' if args.rate else 'closed loop'})"
        joins = joins_row(label, server.port, token, project, seats, args, server_pid=server.pid, counter=counter)
        rows.append(joins)
        print(joins_line(joins), flush=True)
        seated, listed = seated_total(server.port, token, project, args.timeout)
        print(f"  check: memberCount adds up to {seated} over {listed} gatherings; {counter['accepted']} joins "
              f"answered 200 (warm-up included), {counter['timeouts']} timed out", flush=True)
        joins.extra.update(member_count_total=seated, answered_200_total=counter["accepted"])
        if not counter["accepted"] <= seated <= counter["accepted"] + counter["timeouts"]:
            failures.append(f"joins row: memberCount adds up to {seated} but {counter['accepted']} joins answered 200")
        if joins.errors:
            failures.append(f"joins row: errors {dict(joins.errors)}")
        if joins.extra["seats_exhausted"]:
            failures.append(f"joins row: all {args.gatherings * MAX_MEMBERS} seats were handed out before the end of "
                            "the run (raise --gatherings); the figures cover a shorter run")
        if joins.rps < TARGET:
            failures.append(f"joins row: {joins.rps:.0f} joins/s accepted, below the target of {TARGET:g}/s")

        # (2) rush at one gathering
        [lobby] = create_gatherings(server.port, token, project, 1, "Rush lobby", args)
        label = f"rush: {args.rush} joins at one lobby of {MAX_MEMBERS}"
        rush = rush_row(label, server.port, token, project, pool, lobby, args, server_pid=server.pid)
        rows.append(rush)
        print(rush_line(rush), flush=True)
        expected_ok = min(MAX_MEMBERS, args.rush)
        detail = _loadgen.get_json(server.port, token, f"/api/projects/{project}/gatherings/{lobby['id']}",
                                   args.timeout)
        members = _loadgen.get_json(server.port, token, f"/api/projects/{project}/gatherings/{lobby['id']}/members",
                                    args.timeout)
        seated_members = sum(member["status"] in ("joined", "ready") for member in members)
        print(f"  check: GET …/gatherings/{{id}} memberCount {detail['memberCount']} (maxMembers "
              f"{detail['maxMembers']}, status {detail['status']}); {seated_members} seated members listed", flush=True)
        rush.extra.update(member_count=detail["memberCount"], seated_members=seated_members)
        if rush.extra["accepted_200"] != expected_ok:
            failures.append(f"rush row: {rush.extra['accepted_200']} joins answered 200, expected exactly {expected_ok}")
        if rush.extra["full_409"] != args.rush - expected_ok:
            failures.append(f"rush row: {rush.extra['full_409']} joins answered 409, expected {args.rush - expected_ok}")
        if rush.errors:
            failures.append(f"rush row: errors {dict(rush.errors)}")
        if detail["memberCount"] != expected_ok or seated_members != expected_ok:
            failures.append(f"rush row: memberCount {detail['memberCount']} and {seated_members} seated members "
                            f"afterwards, expected {expected_ok}")

        if args.calibrate:
            _loadgen.calibrate(server, args, meta)
    finally:
        server.stop()
    return _loadgen.verdict("gatherings", meta, rows, failures,
                            f"target ≥ {TARGET:g} joins/s accepted into many gatherings without errors; a rush of "
                            f"{args.rush} seats exactly {min(MAX_MEMBERS, args.rush)}")


def build_parser() -> argparse.ArgumentParser:
    parser = _loadgen.bench_parser("Join-by-code benchmark of one Cortex server process (stdlib + gevent load "
                                   "generator).")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds of row 1 (after 1 s warm-up)")
    parser.add_argument("--gatherings", type=int, default=500, help="lobbies (maxMembers 100) row 1 joins into")
    parser.add_argument("--participants", type=int, default=5000,
                        help="participants seeded in the database (at least --rush and 100)")
    parser.add_argument("--connections", type=int, default=40, help="keep-alive connections of row 1")
    parser.add_argument("--rate", type=float, default=0.0, help="joins/s offered in row 1 (0: closed loop, unpaced)")
    parser.add_argument("--rush", type=int, default=1000, help="participants (connections) joining at once in row 2")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-request timeout in seconds (row 1)")
    parser.add_argument("--rush-timeout", type=float, default=60.0, help="per-request timeout in seconds (row 2)")
    _loadgen.add_server_options(parser, redis_help="the server's REDIS_URL (shared rate limits, fan-out)",
                                engines_help="serve without the engines of cortex serve")
    return parser


def invalid_options(args) -> str | None:
    if args.duration <= 0 or args.gatherings < 1 or args.connections < 1 or args.rush < 1 or args.rate < 0:
        return "--duration must be > 0, --gatherings, --connections and --rush >= 1, --rate >= 0"
    return None


def main(argv=None) -> int:
    return _loadgen.bench_main(build_parser(), argv, serve=serve, body=run_bench, prefix="cortex-bench-gatherings-",
                               invalid=invalid_options, sockets=lambda args: args.rush + args.connections + 64)


if __name__ == "__main__":
    sys.exit(main())
