#!/usr/bin/env python3
"""Benchmark: does a flood of logins leave the rest of the server responsive? (Argon2 is bounded.)

One server process (pinned to one core; the app of ``cortex serve`` on gevent's WSGIServer, monkey-patched
first) with one seeded account; this process (on the other core) probes ``GET /api`` at ``--probe-rate`` per second
and measures its latency in three phases of ``--duration`` seconds each:

  (a) quiet: the probe alone;
  (b) flood: ``--logins`` concurrent clients log in, each to its own account, with the right password, back to
      back — every login is a full Argon2id verification (64 MiB, t=3), which Cortex runs in gevent's thread pool at most one per usable
      core at a time (``cortex.lib.crypto``), the rest of the flood waiting as greenlets without a database
      connection;
  (c) guessing: the same clients send wrong passwords for one account from one address, each one guess per
      ``--guess-interval`` seconds (200 guesses/s by default; back to back they would only measure how many 429s
      one core answers): after ``CORTEX_LOGIN_MAX_FAILURES`` attempts every try is answered 429 at once, without
      Argon2 work (``cortex/http/logins.py``).

Target: ``GET /api`` p99 under 100 ms in every phase. Prints one row per phase and the login answers.

Usage: ``python tools/bench_logins.py [--duration 10] [--logins 200] [--probe-rate 100] [--database-url …]``
"""

from __future__ import annotations

# The file is also the server subprocess (``--serve cortex``), which must patch gevent before anything else.
import argparse
import json
import os
import sys

HOST = "127.0.0.1"
EMAIL = "bench-login-{}@bench.invalid"  # one account per flood client
PASSWORD = "bench-login-password-1"
TARGET_P99_MS = 100.0
ACCOUNTS = 200  # seeded accounts; flood client n logs into account n % ACCOUNTS


def serve(args) -> int:
    """The server subprocess: seed the accounts, print {"port", "pid"}, serve until SIGTERM."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _loadgen  # imports neither socket, threading nor ssl: safe before the patch

    _loadgen.start_server_process(args.cpu)

    from models.base import db
    from models.identity import User, create_user

    app, settings = _loadgen.cortex_app(args)
    from cortex.lib import crypto

    stored = crypto.hash_password(PASSWORD)  # one real Argon2id hash for every account (seeding stays fast)
    real_hash, crypto.hash_password = crypto.hash_password, lambda _password: stored
    with db.connection_context():
        User.delete().where(User.email.startswith("bench-login-")).execute()
        for number in range(args.accounts):
            create_user(EMAIL.format(number), PASSWORD, f"Bench Login {number}")
    crypto.hash_password = real_hash
    return _loadgen.serve_app(app, settings, {})


def login_request(email: str, password: str) -> bytes:
    body = json.dumps({"email": email, "password": password}).encode()
    head = (f"POST /api/auth/login-credentials HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nUser-Agent: cortex-bench\r\n\r\n")
    return head.encode() + body


def phase(port: int, label: str, duration: float, rate: float, logins: int, password: str | None, timeout: float,
          pause: float = 0.0):
    """Probe GET /api at ``rate``/s for ``duration`` s while ``logins`` clients log in with ``password`` (none: quiet)."""
    from collections import Counter
    from time import perf_counter

    import gevent
    from _loadgen import HttpConnection, build_request, percentile

    probe_request = build_request("/api")
    probe_latencies: list[float] = []
    login_latencies: list[float] = []
    statuses: Counter = Counter()
    deadline = perf_counter() + duration

    def probe():
        connection = None
        interval, next_at = 1.0 / rate, perf_counter()
        while perf_counter() < deadline:
            started = perf_counter()
            try:
                connection = connection or HttpConnection(port, timeout)
                status, _body, keep = connection.request(probe_request)
                probe_latencies.append(perf_counter() - started if status == 200 else float("inf"))
                if not keep:
                    connection.close()
                    connection = None
            except Exception:
                probe_latencies.append(float("inf"))
                connection = None
            next_at += interval
            gevent.sleep(max(0.0, next_at - perf_counter()))

    def client(number):
        connection = None
        raw = login_request(EMAIL.format(number % ACCOUNTS if password == PASSWORD else 0), password)
        while perf_counter() < deadline:
            started = perf_counter()
            try:
                connection = connection or HttpConnection(port, timeout)
                status, _body, keep = connection.request(raw)
                statuses[status] += 1
                login_latencies.append(perf_counter() - started)
                if not keep:
                    connection.close()
                    connection = None
                if pause:
                    gevent.sleep(pause)
            except Exception as exc:
                statuses[type(exc).__name__] += 1
                connection = None
                gevent.sleep(0.05)

    greenlets = [gevent.spawn(probe)] + ([gevent.spawn(client, n) for n in range(logins)] if password else [])
    gevent.joinall(greenlets, timeout=duration + timeout + 5)
    p50, p99 = (percentile(probe_latencies, p) for p in (50, 99))
    row = {"phase": label, "probe_requests": len(probe_latencies), "probe_p50_ms": round(p50 * 1000, 1),
           "probe_p99_ms": round(p99 * 1000, 1), "logins_per_second": round(len(login_latencies) / duration, 1),
           "login_statuses": {str(key): value for key, value in sorted(statuses.items(), key=str)}}
    if login_latencies:
        row["login_p50_ms"] = round(percentile(login_latencies, 50) * 1000, 1)
        row["login_p99_ms"] = round(percentile(login_latencies, 99) * 1000, 1)
    met = "met" if p99 * 1000 < TARGET_P99_MS else "MISSED"
    logins_text = (f"; logins {row['logins_per_second']}/s, p50 {row.get('login_p50_ms')} ms, "
                   f"answers {row['login_statuses']}" if password else "")
    print(f"{label:<48} GET /api p50 {row['probe_p50_ms']:>6} ms  p99 {row['probe_p99_ms']:>6} ms ({met}){logins_text}",
          flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--logins", type=int, default=200, help="concurrent login clients in the flood phases")
    parser.add_argument("--probe-rate", type=float, default=100.0, help="GET /api requests per second")
    parser.add_argument("--guess-interval", type=float, default=1.0, help="seconds between two guesses of a client")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--serve", choices=["cortex"], help=argparse.SUPPRESS)
    parser.add_argument("--accounts", type=int, default=ACCOUNTS, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tempfile

    from _loadgen import ServerProcess, split_cpus

    (server_cpu, _load_cpu), pinning = split_cpus()
    with tempfile.TemporaryDirectory(prefix="cortex-bench-logins-") as workdir:
        server = ServerProcess("cortex", os.path.abspath(__file__), workdir, server_cpu, args.database_url)
        try:
            server.start()
            print(f"Cortex login-flood benchmark  {pinning}; server pid {server.pid} on port {server.port}; "
                  f"{args.logins} login clients, GET /api probed at {args.probe_rate:g}/s, {args.duration:g} s per "
                  f"phase; target GET /api p99 < {TARGET_P99_MS:g} ms", flush=True)
            rows = [
                phase(server.port, "(a) quiet", args.duration, args.probe_rate, 0, None, args.timeout),
                phase(server.port, f"(b) {args.logins} clients logging in (own accounts)", args.duration,
                      args.probe_rate, args.logins, PASSWORD, args.timeout),
                phase(server.port, f"(c) {args.logins} clients guessing (wrong password)", args.duration,
                      args.probe_rate, args.logins, "not-the-password", args.timeout, args.guess_interval),
            ]
        finally:
            server.stop()
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0 if all(row["probe_p99_ms"] < TARGET_P99_MS for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
