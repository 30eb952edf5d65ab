"""The production server: gevent's WSGI server, one greenlet per connection.

gevent's monkey-patching must happen before anything imports socket/threading/ssl, so ``cortex serve``
calls :func:`patch` first thing. Long-lived responses (SSE) then cost one greenlet each, not a pool slot.
"""

from __future__ import annotations

import logging
import socket

log = logging.getLogger("cortex.serve")


def patch() -> None:
    """Monkey-patch the standard library for gevent and make psycopg2 cooperative."""
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()
    _make_psycopg2_green()


def _make_psycopg2_green() -> None:
    """Let psycopg2 wait for PostgreSQL on gevent's hub instead of blocking the process."""
    try:
        import psycopg2
        from psycopg2 import extensions
    except ImportError:  # pragma: no cover - psycopg2 is a dependency
        return
    from gevent.socket import wait_read, wait_write

    def wait(connection, timeout=None):
        while True:
            state = connection.poll()
            if state == extensions.POLL_OK:
                return
            if state == extensions.POLL_READ:
                wait_read(connection.fileno(), timeout=timeout)
            elif state == extensions.POLL_WRITE:
                wait_write(connection.fileno(), timeout=timeout)
            else:  # pragma: no cover - defensive
                raise psycopg2.OperationalError(f"bad poll state {state!r}")

    extensions.set_wait_callback(wait)


def make_server(app, host: str, port: int, backlog: int = 2048, client_timeout: float | None = None,
                max_connections: int | None = None, listen_fd: int | None = None):
    """A gevent WSGIServer bound to host:port with TCP_NODELAY on every accepted connection.

    ``listen_fd``: serve on this already listening socket instead (``cortex serve --workers``: the socket the
    supervisor bound and handed to every worker process).

    ``client_timeout``: a connection whose client neither sends nor accepts data for this many seconds is
    closed (an idle keep-alive connection, or a stream reader that stopped reading and would otherwise block
    its greenlet in a write forever). Event streams send a heartbeat every 15 s, so live readers never hit it.
    ``max_connections`` (``CORTEX_MAX_CONNECTIONS``): at most this many connections are served at once (a gevent
    pool); further ones wait in the listen backlog until one closes. None: unbounded.
    """
    from gevent.pool import Pool
    from gevent.pywsgi import WSGIHandler, WSGIServer

    class NoDelayHandler(WSGIHandler):
        """Disable Nagle: small JSON responses otherwise wait ~40 ms for a delayed ACK."""

        def __init__(self, sock, address, server, rfile=None):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - e.g. UNIX sockets
                pass
            if client_timeout is not None:
                sock.settimeout(client_timeout)
            super().__init__(sock, address, server, rfile)

    listener = (host, port)
    if listen_fd is not None:  # after patch(): a gevent socket over the inherited descriptor
        listener, backlog = socket.socket(fileno=listen_fd), None  # listening already, with its backlog
    spawn = Pool(max_connections) if max_connections else "default"
    server = WSGIServer(listener, app, handler_class=NoDelayHandler, backlog=backlog, log=None, error_log=log,
                        spawn=spawn)
    return server


def log_greenlet_errors() -> None:
    """A greenlet's unhandled exception goes to the log (CORTEX_LOG_FORMAT: JSON too), not as bare text to
    stderr, which gevent's hub does by default."""
    import gevent

    def print_exception(context, kind, value, traceback) -> None:
        log.error("unhandled error in %s", context, exc_info=(kind, value, traceback))

    gevent.get_hub().print_exception = print_exception


def stop_with_parent(interval: float = 1.0) -> None:
    """A worker of ``cortex serve --workers``: end this process (SIGTERM to itself, a clean stop) once the
    supervisor that started it is gone, e.g. after a SIGKILL — no orphan keeps serving the shared port."""
    import os
    import signal

    import gevent

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            gevent.sleep(interval)
        log.error("the supervisor (pid %d) is gone; stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    gevent.spawn(watch)


GC_FREEZE_INTERVAL = 0.25  # seconds between two "collect what is new, freeze the survivors" (steady_gc)
GC_SWEEP_INTERVAL = 3600.0  # seconds between two collections of everything, the frozen objects too


def steady_gc(interval: float = GC_FREEZE_INTERVAL, sweep: float = GC_SWEEP_INTERVAL) -> None:
    """Keep CPython's cyclic collector from stopping the process for long (a greenlet of :func:`serve`).

    A full collection examines every tracked object (~0.65 µs each): start-up leaves ~135,000 of them and every
    open event stream ~78 more, so with 10,000 streams one full collection stops every request for ~0.6 s; and
    the young generation grows to ~70,000 objects between two collections (every stream re-arms a timed wait at
    each heartbeat and event, 7 objects that outlive the allocation count), ~50-75 ms each. Instead, every
    ``interval`` seconds: collect (only what is not frozen — what is new since the last time: small) and freeze
    the survivors (``gc.freeze``: ignored by later collections, still freed by reference counting as usual).
    Reference cycles that form among frozen objects later (measured: ~10 objects a second under load) wait for
    the sweep every ``sweep`` seconds (unfreeze, collect everything: one full-length pause).
    """
    import gc
    import time

    import gevent

    gc.collect()
    gc.freeze()
    last_sweep = time.monotonic()
    while True:
        gevent.sleep(interval)
        if time.monotonic() - last_sweep >= sweep:
            gc.unfreeze()
            last_sweep = time.monotonic()
        gc.collect()
        gc.freeze()


def flush_metrics(interval: float | None = None) -> None:
    """PROMETHEUS_MULTIPROC_DIR: write this process's request metrics to the shared directory every ``interval``
    seconds (``cortex.lib.metrics.FLUSH_INTERVAL``; a greenlet of :func:`serve`), so the other processes'
    ``/metrics`` see them within that time."""
    import gevent

    from cortex.lib import metrics

    while True:
        gevent.sleep(interval or metrics.FLUSH_INTERVAL)
        metrics.flush_requests()


def serve(app, host: str, port: int, listen_fd: int | None = None, draining=None) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting, call ``draining()`` (``cortex serve``: end the open
    event streams, whose clients reconnect elsewhere) and give the other open requests up to 5 s to finish."""
    import signal

    import gevent
    from gevent.event import Event

    settings = app.extensions["cortex"].settings
    server = make_server(app, host, port, client_timeout=settings.client_timeout,
                         max_connections=settings.max_connections, listen_fd=listen_fd)
    log_greenlet_errors()
    stopping = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)
    collector = gevent.spawn(steady_gc)
    flusher = gevent.spawn(flush_metrics)
    try:
        server.start()
        log.info("Cortex listening on http://%s:%s (API docs: /api/docs/)", host, server.server_port)
        stopping.wait()
    except KeyboardInterrupt:
        pass
    finally:
        collector.kill(block=False)
        flusher.kill(block=False)
        server.stop_accepting()
        if draining is not None:
            draining()
        server.stop(timeout=5)
        from cortex.http.observability import process_exiting

        process_exiting()  # PROMETHEUS_MULTIPROC_DIR: this process's open-stream gauge stops counting
