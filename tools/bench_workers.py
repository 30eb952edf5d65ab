#!/usr/bin/env python3
"""Benchmark ``cortex serve --workers N`` (one port, N serving processes) against one process, and — when the
``gunicorn`` package is importable — against the usual alternative, gunicorn's gevent worker class with the same
number of processes (``gunicorn -k gevent -w N 'cortex.http.app:create_app()'``).

Each configuration is a real server started from its command line on a fresh SQLite data directory (or
``--database-url``): ``cortex db upgrade``, ``cortex admin create-user``, then the server; the user logs in once
for a token. Rows, each ``--duration`` seconds after a 1 s warm-up over ``--connections`` keep-alive connections
(the load generator of ``tools/_loadgen.py``, this process, not pinned):

  GET /api              no database
  GET /api/projects     bearer token, one query, JSON
  POST /api/auth/login-credentials   Argon2 (CPU-bound, ~50 ms each): what several processes help with

Printed: requests/s, p50/p99, errors, and the CPU the server processes (all of them) and the load generator used.
Everything talks to 127.0.0.1 only; every server is stopped (SIGTERM) after its rows, and its data removed.

Usage:
    tools/bench_workers.py [--workers 1,2] [--duration 10] [--connections 20] [--database-url postgresql://…]
                           [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
sys.path.insert(0, TOOLS)

from _loadgen import BenchError, Result, build_request, fetch, own_cpu_seconds, request_loop  # noqa: E402

EMAIL = "bench-workers@bench.invalid"
PASSWORD = "bench-workers-password"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tree_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of ``pid`` and of each of its live children (the workers), by pid."""
    seconds = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            seconds[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


class Server:
    """One server configuration on a fresh data directory."""

    def __init__(self, kind: str, workers: int, args, workdir: str):
        self.kind, self.workers = kind, workers
        self.port = free_port()
        data = os.path.join(workdir, f"{kind}-{workers}")
        os.makedirs(data)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_") and k != "DATABASE_URL"}
        self.env.update(CORTEX_DATA_DIR=data, CORTEX_LOG_LEVEL="WARNING", CORTEX_FUNCTIONS_RUNTIME="false",
                        CORTEX_SECRET_KEY="bench-workers-secret-key-0123456789abcdef")
        if args.database_url:
            self.env["DATABASE_URL"] = args.database_url
        cortex = [sys.executable, "-m", "cortex.cli"]
        subprocess.run([*cortex, "db", "upgrade"], env=self.env, cwd=ROOT, check=True, capture_output=True)
        made = subprocess.run([*cortex, "admin", "create-user", "--email", EMAIL, "--password", PASSWORD],
                              env=self.env, cwd=ROOT, capture_output=True, text=True)
        if made.returncode != 0 and "already" not in made.stderr:
            raise BenchError(f"create-user failed: {made.stderr.strip()}")
        if kind == "cortex":
            argv = [*cortex, "serve", "--port", str(self.port), "--workers", str(workers)]
        else:
            argv = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", str(workers), "--worker-connections",
                    "10000", "-b", f"127.0.0.1:{self.port}", "--log-level", "warning", "cortex.http.app:create_app()"]
        self.log = open(os.path.join(workdir, f"{kind}-{workers}.log"), "w+")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(argv, env=self.env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                if fetch(self.port, build_request("/api"), 2.0)[0] == 200:
                    break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise BenchError(f"{kind} did not start: {self.log.read()[-2000:]}")
            time.sleep(0.2)
        body = {"email": EMAIL, "password": PASSWORD}
        status, answer = fetch(self.port, build_request("/api/auth/login-credentials", method="POST", body=body), 30)
        if status != 201:
            raise BenchError(f"login answered {status}: {answer[:200]!r}")
        self.token = json.loads(answer)["accessToken"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def measure_row(server: Server, label: str, raw: bytes, ok_status: int, args) -> dict:
    cpu0, own0, wall0 = tree_cpu_seconds(server.process.pid), own_cpu_seconds(), time.monotonic()
    result = request_loop(Result(label, label, args.duration, args.connections, 10.0), server.port,
                          lambda _index: raw, ok_status=ok_status)
    wall = time.monotonic() - wall0
    cpu1 = tree_cpu_seconds(server.process.pid)
    row = result.as_dict()
    per_process = {pid: round((cpu1[pid] - cpu0.get(pid, 0.0)) / wall * 100) for pid in cpu1}
    row["server_cpu_percent"] = sum(per_process.values())
    row["process_cpu_percent"] = sorted(per_process.values(), reverse=True)  # how evenly the workers share
    row["loadgen_cpu_percent"] = round((own_cpu_seconds() - own0) / wall * 100)
    return row


def run(args) -> dict:
    workdir = tempfile.mkdtemp(prefix="cortex-bench-workers-")
    configurations = [("cortex", n) for n in args.workers]
    try:
        import gunicorn  # noqa: F401

        configurations += [("gunicorn", n) for n in args.workers]
    except ImportError:
        print("gunicorn is not installed: its rows are skipped (pip install gunicorn to compare)", flush=True)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {args.connections} connections, "
          f"{args.duration:g} s per row; database: {'PostgreSQL' if args.database_url else 'SQLite'}", flush=True)
    rows = []
    try:
        for kind, workers in configurations:
            server = Server(kind, workers, args, workdir)
            try:
                login = build_request("/api/auth/login-credentials", method="POST",
                                      body={"email": EMAIL, "password": PASSWORD})
                for label, raw, ok in (("GET /api", build_request("/api"), 200),
                                       ("GET /api/projects", build_request("/api/projects", server.token), 200),
                                       ("POST login-credentials", login, 201)):
                    row = measure_row(server, label, raw, ok, args)
                    row.update(server=kind, workers=workers)
                    rows.append(row)
                    print(f"  {kind} ×{workers}  {label:24} {row['requests_per_second']:8.1f}/s  p50 "
                          f"{row['p50_ms']} ms  p99 {row['p99_ms']} ms  errors {row['error_count']}  server CPU "
                          f"{row['server_cpu_percent']}% {row['process_cpu_percent']}  load generator {row['loadgen_cpu_percent']}%", flush=True)
            finally:
                server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"rows": rows, "load_average": os.getloadavg()[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="comma-separated process counts")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        args.workers = [int(n) for n in args.workers.split(",")]
    except ValueError:
        parser.error("--workers: comma-separated integers")
    if min(args.workers) < 1 or args.duration <= 0 or args.connections < 1:
        parser.error("--workers, --connections must be >= 1 and --duration > 0")
    try:
        report = run(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
