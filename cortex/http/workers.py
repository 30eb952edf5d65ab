"""``cortex serve --workers N``: one port served by N processes on a host.

The supervisor (this module, plain Python: no gevent, no app, no database connection) binds the listening socket
once, then starts N worker processes — each an ordinary ``cortex serve`` (gevent server, every ``serve`` engine)
that serves on the inherited socket instead of binding its own. The kernel hands each new connection to
whichever worker accepts it first, so a busy worker takes fewer; a worker that dies leaves its queued
connections to the others. Every worker is what a separate ``cortex serve`` process would be, so everything that
already holds for several processes holds here (PostgreSQL + Redis: see docs/deployment.md).

- **Migrations** run once, in the supervisor, before any worker starts.
- **Metrics**: unless ``PROMETHEUS_MULTIPROC_DIR`` is set, the supervisor creates a fresh one for its workers
  (removed on exit), so any worker's ``GET /metrics`` reports all of them; a worker that dies is marked dead there.
- **Crashes**: a worker that exits on its own is started again after 1 s, doubling up to 30 s while it keeps
  dying within a minute of its start. A configuration error (exit status 2) stops everything with status 2.
- **Stopping**: SIGTERM or SIGINT is passed to every worker; each stops accepting, gives open requests up to 5 s
  and stops its engines; a worker still running 20 s later is killed.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

log = logging.getLogger("cortex.serve")

RESTART_MIN = 1.0
RESTART_MAX = 30.0
STABLE_AFTER = 60.0  # a worker that ran this long restarts after RESTART_MIN again
STOP_GRACE = 20.0
CONFIGURATION_ERROR = 2


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The listening TCP socket every worker shares (port 0: the kernel picks one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


class Worker:
    """One worker process and its restart schedule."""

    def __init__(self, number: int, argv: list[str], env: dict, fd: int):
        self.number, self.argv, self.env, self.fd = number, argv, env, fd
        self.process: subprocess.Popen | None = None
        self.started = 0.0
        self.delay = RESTART_MIN
        self.restart_at: float | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=self.env, pass_fds=(self.fd,))
        self.started = time.monotonic()
        self.restart_at = None

    def exited(self) -> int | None:
        """The exit status once the process has ended (and was not yet reaped here), else None."""
        if self.process is None or self.restart_at is not None:
            return None
        return self.process.poll()

    def schedule_restart(self) -> float:
        if time.monotonic() - self.started >= STABLE_AFTER:
            self.delay = RESTART_MIN
        wait, self.delay = self.delay, min(self.delay * 2, RESTART_MAX)
        self.restart_at = time.monotonic() + wait
        return wait


def run(host: str, port: int, workers: int, child_argv: list[str]) -> int:
    """Bind, start ``workers`` processes of ``child_argv + ['--listen-fd', fd]``, supervise them until SIGTERM or
    SIGINT; the exit status."""
    sock = listen(host, port)
    fd = sock.fileno()
    env = dict(os.environ)
    own_metrics_dir = None
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        own_metrics_dir = tempfile.mkdtemp(prefix="cortex-metrics-")
        env["PROMETHEUS_MULTIPROC_DIR"] = own_metrics_dir
    metrics_dir = env["PROMETHEUS_MULTIPROC_DIR"]
    stopping = []
    previous = {signum: signal.signal(signum, lambda *_: stopping.append(True))
                for signum in (signal.SIGTERM, signal.SIGINT)}
    pool = [Worker(number, [*child_argv, "--listen-fd", str(fd)], env, fd) for number in range(workers)]
    status = 0
    try:
        for worker in pool:
            worker.start()
        print(f"cortex serve: {workers} worker processes on http://{host}:{sock.getsockname()[1]} "
              f"(pids {' '.join(str(w.process.pid) for w in pool)}; supervisor pid {os.getpid()})", flush=True)
        while not stopping:
            time.sleep(0.2)
            for worker in pool:
                code = worker.exited()
                if code is not None:
                    _mark_dead(worker.process.pid, metrics_dir)
                    if code == CONFIGURATION_ERROR:
                        log.error("worker %d exited with a configuration error; stopping", worker.process.pid)
                        status = CONFIGURATION_ERROR
                        stopping.append(True)
                        break
                    wait = worker.schedule_restart()
                    log.error("worker %d exited with status %s; starting another in %.0f s", worker.process.pid,
                              code, wait)
                elif worker.restart_at is not None and time.monotonic() >= worker.restart_at and not stopping:
                    worker.start()
                    log.info("worker %d started", worker.process.pid)
    finally:
        _stop(pool)
        sock.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if own_metrics_dir:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)
    return status


def _stop(pool: list[Worker]) -> None:
    """SIGTERM every running worker; kill what still runs after STOP_GRACE."""
    running = [w.process for w in pool if w.process is not None and w.process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for process in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker %d did not stop within %.0f s; killed", process.pid, STOP_GRACE)
            process.kill()
            process.wait()


def _mark_dead(pid: int, metrics_dir: str) -> None:
    """A dead worker's live gauges (open streams) stop counting in ``/metrics``."""
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, metrics_dir)
    except Exception:  # pragma: no cover - metrics never stop the supervisor
        log.exception("could not mark worker %d dead in %s", pid, metrics_dir)


def child_argv(host: str, port: int) -> list[str]:
    """The command line of one worker: this interpreter running ``cortex serve``."""
    return [sys.executable, "-m", "cortex.cli", "serve", "--host", host, "--port", str(port)]
