#!/usr/bin/env python3
"""Benchmark one Cortex server process over HTTP: requests/s and p50/p99 latency, with and without open streams.

The server is the real thing: a subprocess that calls ``cortex.http.serve.patch()`` first, builds the app with
``cortex.http.app.create_app`` (gevent WSGIServer + Flask + the Connexion-built routes of ``openapi/cortex.json``),
migrates a fresh database, seeds one user whose tenant owns exactly 50 API keys, and serves through
``cortex.http.serve.make_server`` on 127.0.0.1. Three rows are measured against that one process:

  (a) ``GET /api/api-keys`` with ``Authorization: Bearer <token>`` (JWT check + a 50-row query + JSON);
  (b) ``GET /api`` (health, no database);
  (c) ``GET /api`` while ``--streams`` (default 1000) long-lived ``text/event-stream`` responses are open on
      the same process. Before the SSE feature exists the server adds one bench-only route to the real app,
      ``/bench/stream``, whose generator yields ``b": tick\\n\\n"`` every second.

``--compare`` measures ``GET /api`` on alternative stacks instead, each in its own subprocess: ours, Connexion 3's
``connexion.FlaskApp`` out of the box on uvicorn with the same document (every operation answers
``{"status": "ok"}``), and that FlaskApp again while 200 streaming responses are open (a2wsgi runs Flask in a
10-thread pool, so streams starve everything else). Stacks whose packages are missing are skipped with a note.

The load generator is this script's own process (``tools/_loadgen.py``): gevent greenlets on raw keep-alive
HTTP/1.1 sockets with pre-built request bytes, ``--connections`` of them for ``--duration`` seconds after a 1 s
warm-up, per-request latency from ``time.perf_counter``. No wrk or ab is needed. With 2+ CPUs the server is
pinned to one CPU and the load generator to another. All traffic goes to 127.0.0.1 and every loop ends by
itself at its deadline; subprocesses and the temporary directory are removed on exit and on Ctrl-C.

Usage:
    tools/bench_http.py [--duration 10] [--connections 20] [--streams 1000] [--json]
                        [--database-url postgresql://postgres@127.0.0.1:5432/test] [--prism COMMAND]
    tools/bench_http.py --compare [--duration 10] [--connections 20] [--json]
    tools/bench_http.py --metrics-cost [--rounds 3] [--duration 10] [--database-url URL] [--json]

``--metrics-cost`` answers "what do the request metrics cost": one server under a steady load whose request metrics
switch on (as shipped) and off (``cortex.lib.metrics.observe_request`` a no-op; a bench-only route switches it;
request ids and the access log stay on) every 0.5 s, so both states run in the very same process and share the
machine's drift; it prints req/s in each state and the loss, per run (``--rounds``, ``--duration`` s each) and over
all runs. (Two processes of the same code differed by up to ~10 % from memory layout alone, and runs minutes apart
by as much on a shared virtual machine: comparing separate runs could not resolve a cost of a few per cent.)
"""

from __future__ import annotations

# Only modules that do not pull in socket/threading/ssl are imported here: the same file is the server
# subprocess (``--serve cortex``), which must run cortex.http.serve.patch() before anything else imports them.
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC_PATH = os.path.join(ROOT, "openapi", "cortex.json")
HOST = "127.0.0.1"
API_KEYS = 50
TICK = b": tick\n\n"
MAX_STREAM_SECONDS = 3600
FD_LIMIT = 65536


# ----------------------------------------------------------------- helpers shared by both kinds of process


def raise_fd_limit(wanted: int = FD_LIMIT) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (capped by the hard limit); returns the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pin_to_cpu(cpu: int | None) -> None:
    """Pin this process (and the threads it starts later) to one CPU."""
    if cpu is not None and cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def exit_with_parent(stop) -> None:
    """Call ``stop()`` once the parent (the load generator) is gone, e.g. after a SIGKILL."""
    import threading
    import time

    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        stop()

    threading.Thread(target=watch, name="bench-parent-watch", daemon=True).start()


def bench_stream_view():
    """Bench-only long-lived response: one SSE comment per second for ``?seconds=``."""
    import time

    import flask  # imported here: server subprocesses patch gevent before importing flask

    seconds = stream_seconds(flask.request.args)

    def ticks():
        end = time.monotonic() + seconds
        yield TICK
        while time.monotonic() < end:
            time.sleep(1)
            yield TICK

    return flask.Response(ticks(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})


def bench_metrics_view(state: str):
    """Bench-only switch of ``--metrics-cost``: ``POST /bench/metrics/off`` replaces
    ``cortex.lib.metrics.observe_request`` (what counts a request and its duration) with a no-op, ``…/on`` puts it
    back. The request id and the access log stay on either way."""
    import flask

    from cortex.lib import metrics

    if state not in ("on", "off"):
        flask.abort(404)
    original = getattr(bench_metrics_view, "original", None) or metrics.observe_request
    bench_metrics_view.original = original
    metrics.observe_request = original if state == "on" else (lambda operation, status, seconds: None)
    return {"metrics": state}


def stream_seconds(request_args) -> int:
    """How long a /bench/stream response lasts: ``?seconds=`` clamped to [0, MAX_STREAM_SECONDS]."""
    try:
        seconds = int(request_args.get("seconds", "60"))
    except ValueError:
        seconds = 60
    return max(0, min(seconds, MAX_STREAM_SECONDS))


# ----------------------------------------------------------------- server subprocess: our stack


def serve_cortex(args) -> int:
    """The real app on cortex.http.serve.make_server, seeded with 50 API keys; prints {"port", "token"} when ready."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _loadgen  # imports neither socket, threading nor ssl: safe before the patch

    _loadgen.start_server_process(args.cpu)

    from models.base import db
    from models.identity import ApiKey, create_api_key, create_project
    from models.sessions import Session

    app, settings = _loadgen.cortex_app(args)
    with db.connection_context():
        user = _loadgen.bench_user()
        for number in range(API_KEYS):
            create_api_key(user.tenant_id, user.id, f"bench key {number:02d}", ["sessions:read"], None, None)
        project, _secret = create_project(user, "Bench Project")
        for number in range(API_KEYS):  # 50 sessions for the listSessions row (created directly, no bot)
            Session.create(project=project.id, tenant_id=user.tenant_id, external_room_id=f"room-{number:02d}",
                           title=f"Bench session {number:02d}", created_by_user_id=user.id, status="active")

    # time.sleep is gevent's here (patched first): each stream costs one greenlet.
    app.add_url_rule("/bench/stream", "bench_stream", view_func=bench_stream_view)
    app.add_url_rule("/bench/metrics/<state>", "bench_metrics", view_func=bench_metrics_view, methods=["POST"])

    def remove_api_keys(user):
        ApiKey.delete().where(ApiKey.tenant == user.tenant_id).execute()

    return _loadgen.serve_app(app, settings, {"project": project.id}, user=user, cleanup=remove_api_keys)


# ----------------------------------------------------------------- server subprocess: Connexion 3 on uvicorn


def serve_connexion(args) -> int:
    """connexion.FlaskApp out of the box on uvicorn, same document, every operation answering {"status": "ok"}."""
    pin_to_cpu(args.cpu)
    raise_fd_limit()
    import socket

    import connexion
    import uvicorn
    from connexion.resolver import Resolver

    def handler(*_args, **_kwargs):
        return {"status": "ok"}

    cx_app = connexion.FlaskApp(__name__)
    cx_app.add_api(SPEC_PATH, resolver=Resolver(function_resolver=lambda _operation_id: handler))

    # time.sleep blocks one of a2wsgi's worker threads for the life of each stream.
    cx_app.app.add_url_rule("/bench/stream", "bench_stream", view_func=bench_stream_view)

    with socket.socket() as probe:  # a free port (the parent waits until uvicorn answers on it)
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    exit_with_parent(lambda: os._exit(0))
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    # On SIGTERM uvicorn waits for in-flight responses, which stream-holding worker threads never finish: give
    # up after 2 s (uvicorn then re-raises the SIGTERM); should run() return instead, leave without joining
    # a2wsgi's thread pool, whose queued streams would otherwise keep the process alive.
    uvicorn.run(cx_app, host=HOST, port=port, log_level="error", timeout_graceful_shutdown=2)
    sys.stdout.flush()
    os._exit(0)


# ----------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar (``--serve`` and its companions are internal)."""
    parser = argparse.ArgumentParser(
        description="HTTP benchmark of one Cortex server process (stdlib + gevent load generator).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="measured seconds per row (after 1 s warm-up)"
    )
    parser.add_argument("--connections", type=int, default=20, help="concurrent keep-alive connections")
    parser.add_argument("--streams", type=int, default=1000, help="open streaming responses for row (c)")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-request timeout in seconds")
    parser.add_argument(
        "--database-url",
        help="e.g. postgresql://postgres@127.0.0.1:5432/test (default: SQLite in a temporary directory); "
        "the seeded tenant is deleted again when the server stops; --compare always uses SQLite",
    )
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--prism", metavar="COMMAND",
                        help="also measure listSessions on the Prism mock server of the same document and print "
                             "Cortex's ratio to it, e.g. --prism 'npx --yes @stoplight/prism-cli@5' (needs npm)")
    parser.add_argument("--compare", action="store_true", help="compare GET /api across server stacks")
    parser.add_argument("--metrics-cost", action="store_true",
                        help="measure what the request metrics cost: listSessions and GET /api on one server whose "
                             "metrics switch on and off every 0.5 s under load, --rounds runs of --duration s")
    parser.add_argument("--rounds", type=int, default=3, help="runs per request of --metrics-cost")
    parser.add_argument("--serve", choices=["cortex", "connexion"], help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    """Dispatch: a server subprocess (internal) or the benchmark itself."""
    args = build_parser().parse_args(argv)
    if args.serve == "cortex":
        return serve_cortex(args)
    if args.serve == "connexion":
        return serve_connexion(args)
    if args.duration <= 0 or args.connections < 1 or args.streams < 0 or args.timeout <= 0 or args.rounds < 1:
        print(
            "bench: --duration and --timeout must be > 0, --connections and --rounds >= 1, --streams >= 0",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _loadgen  # the parent only: gevent without monkey-patching

    return _loadgen.run(args, script=os.path.abspath(__file__), fd_limit=raise_fd_limit())


if __name__ == "__main__":
    sys.exit(main())
