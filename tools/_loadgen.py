"""Load generator and orchestration of the benchmarks in ``tools/`` (``bench_http.py``, ``bench_ingest.py``,
``bench_gatherings.py``, ``bench_logins.py``, ...), plus the few pieces their Cortex server subprocesses share.

Importing this module pulls in neither socket, threading nor ssl (they are imported where they are used), so a
server subprocess may import it before ``cortex.http.serve.patch()``. In the parent, gevent is used *without*
monkey-patching: the HTTP client talks to ``gevent.socket`` directly, one greenlet per
keep-alive connection, with pre-built request bytes and a minimal HTTP/1.1 response parser (status line,
Content-Length or chunked body). Every loop checks a deadline and every socket has a timeout, so a run always
ends by itself. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import select
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from importlib.util import find_spec
from time import perf_counter
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import gevent

if TYPE_CHECKING:
    import subprocess

HOST = "127.0.0.1"
WARMUP = 1.0
API_KEYS = 50
STREAM_OPEN_TIMEOUT = 30.0  # row (c): all streams must have their first chunk within this
COMPARE_STREAMS = 200
FIRST_BYTE_WINDOW = 5.0  # --compare: streams that got their first byte within this many seconds
STREAM_CONNECT_CONCURRENCY = 200
SERVER_START_TIMEOUT = 90.0


class BenchError(Exception):
    """The benchmark cannot go on (server did not start, unexpected response, ...)."""


# ----------------------------------------------------------------- raw HTTP/1.1 client


def build_request(
    path: str, token: str | None = None, accept: str = "application/json", method: str = "GET", body=None
) -> bytes:
    """The bytes of one keep-alive request (a GET by default); ``body``, if any, is sent as compact JSON."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", f"Accept: {accept}", "User-Agent: cortex-bench"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + data


class HttpConnection:
    """One keep-alive connection: send pre-built bytes, read exactly one response."""

    def __init__(self, port: int, timeout: float):
        from gevent import socket as gsocket

        self.sock = gsocket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionResetError("server closed the connection")
        self.buf += data

    def _until(self, separator: bytes) -> bytes:
        while True:
            index = self.buf.find(separator)
            if index >= 0:
                out = bytes(self.buf[:index])
                del self.buf[: index + len(separator)]
                return out
            self._fill()

    def _exact(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._fill()
        out = bytes(self.buf[:size])
        del self.buf[:size]
        return out

    def _to_eof(self) -> bytes:
        while True:
            data = self.sock.recv(65536)
            if not data:
                out = bytes(self.buf)
                self.buf.clear()
                return out
            self.buf += data

    def request(self, raw: bytes) -> tuple[int, bytes, bool]:
        """Send one request; returns (status, body, connection reusable)."""
        self.sock.sendall(raw)
        lines = self._until(b"\r\n\r\n").split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ValueError(f"bad status line {lines[0][:80]!r}")
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        keep = headers.get(b"connection", b"").lower() != b"close" and parts[0] == b"HTTP/1.1"
        if b"content-length" in headers:
            body = self._exact(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            chunks = []
            while True:
                size = int(self._until(b"\r\n").split(b";", 1)[0], 16)
                if size == 0:
                    while self._until(b"\r\n"):  # trailers, then the empty line
                        pass
                    break
                chunks.append(self._exact(size))
                self._exact(2)
            body = b"".join(chunks)
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            body, keep = self._to_eof(), False
        return status, body, keep


def _close(connection: HttpConnection | None) -> None:
    if connection is not None:
        connection.close()


def fetch(port: int, raw: bytes, timeout: float) -> tuple[int, bytes]:
    """One request on a fresh connection."""
    connection = HttpConnection(port, timeout)
    try:
        status, body, _keep = connection.request(raw)
        return status, body
    finally:
        connection.close()


def get_json(port: int, token: str | None, path: str, timeout: float):
    """``GET path`` (on a fresh connection, at least 30 s to answer) parsed; BenchError unless it answers 200."""
    status, body = fetch(port, build_request(path, token), max(timeout, 30.0))
    if status != 200:
        raise BenchError(f"GET {path} answered {status}: {body[:200]!r}")
    return json.loads(body)


# ----------------------------------------------------------------- CPU accounting


def process_cpu_seconds(pid: int | None) -> float | None:
    """user+system CPU seconds of a process (all its threads), from /proc; None when unavailable."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def own_cpu_seconds() -> float:
    """user+system CPU seconds of this process."""
    times = os.times()
    return times.user + times.system


# ----------------------------------------------------------------- the latency loop


def percentile(values, p: float) -> float | None:
    """Nearest-rank percentile of ``values``; None without values."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Result:
    """One measured row."""

    key: str
    label: str
    duration: float
    connections: int
    timeout: float
    ok: int = 0
    latencies: list = field(default_factory=list)  # seconds; math.inf for a timed-out request
    errors: Counter = field(default_factory=Counter)
    server_cpu: float | None = None  # fraction of one CPU during the measured window
    loadgen_cpu: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.ok / self.duration

    def percentile(self, p: float) -> float | None:
        """Nearest-rank percentile of the latencies (inf when it falls on a timeout); None without samples."""
        return percentile(self.latencies, p)

    def as_dict(self) -> dict:
        def ms(value):
            return None if value is None or math.isinf(value) else round(value * 1000, 3)

        p50, p99 = self.percentile(50), self.percentile(99)
        return {
            "key": self.key,
            "label": self.label,
            "requests_per_second": round(self.rps, 1),
            "requests_ok": self.ok,
            "p50_ms": ms(p50),
            "p99_ms": ms(p99),
            "p50_is_timeout": p50 is not None and math.isinf(p50),
            "p99_is_timeout": p99 is not None and math.isinf(p99),
            "errors": dict(self.errors),
            "error_count": sum(self.errors.values()),
            "duration_s": self.duration,
            "connections": self.connections,
            "request_timeout_s": self.timeout,
            "server_cpu_percent": None if self.server_cpu is None else round(self.server_cpu * 100, 1),
            "loadgen_cpu_percent": None if self.loadgen_cpu is None else round(self.loadgen_cpu * 100, 1),
            **self.extra,
        }


def measure(
    key: str,
    label: str,
    port: int,
    raw: bytes,
    *,
    connections: int,
    duration: float,
    timeout: float,
    server_pid: int | None = None,
) -> Result:
    """``connections`` greenlets send ``raw`` back to back for WARMUP + duration seconds.

    req/s counts the 200 responses that completed inside the measured window. Latencies and errors cover every
    request that overlaps the window (started before its end, finished after its start), each with its full
    latency: a request in flight at the deadline is awaited (at most ``timeout``), so a stalled server shows up
    as timeouts (+inf in the latencies, so percentiles show it) instead of as no data. Anything but a 200 is an
    error, by status or exception name. No request is started after the deadline.
    """
    result = Result(key, label, duration, connections, timeout)
    return request_loop(result, port, lambda _index: raw, server_pid=server_pid)


def request_loop(
    result: Result,
    port: int,
    next_request,
    *,
    rate: float = 0.0,
    server_pid: int | None = None,
    ok_status: int = 200,
    counted: dict | None = None,
    counter: dict | None = None,
) -> Result:
    """``result.connections`` greenlets send ``next_request(index)`` (index: the connection's number; None ends
    that connection) for WARMUP + ``result.duration`` seconds, back to back or, with ``rate``, paced at ``rate``
    requests/s in all (each connection's sends spread evenly); fills ``result`` and returns it.

    As :func:`measure` describes, with ``ok_status`` the answer that counts as ok (latency recorded, ``ok`` +1
    when it completed inside the window); a status in ``counted`` (status -> key) is counted in
    ``result.extra[key]`` inside the window instead of being an error. ``counter`` (optional) counts every
    ``ok_status`` answer in "accepted" and every time-out in "timeouts", warm-up included.
    """
    counted = counted or {}
    connections, duration, timeout = result.connections, result.duration, result.timeout
    start = perf_counter()
    window_start = start + WARMUP
    deadline = window_start + duration
    marks = {}
    interval = connections / rate if rate else 0.0  # seconds between two sends of one connection

    def mark(name):
        marks[name] = cpu_mark(server_pid)

    def worker(index):
        connection = None
        sent = 0
        offset = index / connections * interval  # spread the connections' sends over the interval
        while perf_counter() < deadline:
            if interval:
                wait = start + offset + sent * interval - perf_counter()
                if wait > 0:
                    gevent.sleep(wait)
                    if perf_counter() >= deadline:
                        break
            raw = next_request(index)
            if raw is None:
                break
            sent += 1
            began = perf_counter()
            try:
                if connection is None:
                    connection = HttpConnection(port, timeout)
                status, _body, keep = connection.request(raw)
            except TimeoutError:
                if counter is not None:
                    counter["timeouts"] = counter.get("timeouts", 0) + 1
                if perf_counter() >= window_start:
                    result.latencies.append(math.inf)
                    result.errors["timeout"] += 1
                _close(connection)
                connection = None
                continue
            except (OSError, ValueError) as exc:
                if perf_counter() >= window_start:
                    result.errors[type(exc).__name__] += 1
                _close(connection)
                connection = None
                gevent.sleep(0.01)  # a refused connection must not become a busy loop
                continue
            ended = perf_counter()
            if counter is not None and status == ok_status:
                counter["accepted"] = counter.get("accepted", 0) + 1
            if ended >= window_start:
                if status == ok_status:
                    result.latencies.append(ended - began)
                    result.ok += ended < deadline
                elif status in counted:
                    result.extra[counted[status]] += ended < deadline
                else:
                    result.errors[f"HTTP {status}"] += 1
            if not keep:
                _close(connection)
                connection = None
        _close(connection)

    greenlets = [
        gevent.spawn_later(WARMUP, mark, "start"),
        gevent.spawn_later(WARMUP + duration, mark, "end"),
    ]
    greenlets += [gevent.spawn(worker, index) for index in range(connections)]
    gevent.joinall(greenlets, timeout=WARMUP + duration + timeout + 5)
    gevent.killall(greenlets, timeout=5)
    if "start" in marks and "end" in marks:
        set_cpu(result, marks["start"], marks["end"])
    return result


def cpu_mark(server_pid: int | None) -> tuple:
    """(now, the server's CPU seconds, this process's CPU seconds): one end of a measured window."""
    return perf_counter(), process_cpu_seconds(server_pid), own_cpu_seconds()


def set_cpu(result: Result, begin: tuple, end: tuple) -> None:
    """The server's and the load generator's CPU share between two ``cpu_mark``s, into ``result``."""
    (t0, s0, l0), (t1, s1, l1) = begin, end
    if s0 is not None and s1 is not None:
        result.server_cpu = (s1 - s0) / (t1 - t0)
    result.loadgen_cpu = (l1 - l0) / (t1 - t0)


# ----------------------------------------------------------------- long-lived streams


@dataclass
class Stream:
    """One open /bench/stream response as seen by the client."""

    sent_at: float | None = None
    first_at: float | None = None
    status: int | None = None
    ticks: int = 0
    closed: bool = False  # the server ended the response / closed the connection
    error: str | None = None
    sock: object = None

    @property
    def alive(self) -> bool:
        return self.status == 200 and not self.closed and self.error is None


class StreamSet:
    """``count`` concurrent GET /bench/stream responses, each read by its own greenlet counting ticks."""

    def __init__(self, port: int, count: int, seconds: int, read_timeout: float):
        self.port = port
        self.raw = build_request(f"/bench/stream?seconds={seconds}", accept="text/event-stream")
        self.streams = [Stream() for _ in range(count)]
        self.read_timeout = read_timeout
        self.greenlets = []
        self.opened_at = None

    def open(self) -> None:
        from gevent.lock import BoundedSemaphore

        gate = BoundedSemaphore(STREAM_CONNECT_CONCURRENCY)
        self.opened_at = perf_counter()
        self.greenlets = [gevent.spawn(self._read, stream, gate) for stream in self.streams]

    def _read(self, stream: Stream, gate) -> None:
        from gevent import socket as gsocket

        try:
            with gate:
                sock = gsocket.create_connection((HOST, self.port), timeout=self.read_timeout)
                stream.sock = sock
                sock.sendall(self.raw)
                stream.sent_at = perf_counter()
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = sock.recv(4096)
                if not data:
                    stream.closed = True
                    return
                buf += data
            head, _, data = buf.partition(b"\r\n\r\n")
            stream.status = int(head.split(b" ", 2)[1])
            if stream.status != 200:
                stream.error = f"HTTP {stream.status}"
                return
            tail = b""
            while True:
                if data:
                    window = tail + data  # a tick split across two reads is counted once
                    ticks = window.count(b"tick")
                    if ticks:
                        stream.ticks += ticks
                        if stream.first_at is None:
                            stream.first_at = perf_counter()
                    tail = window[-3:]
                data = sock.recv(4096)
                if not data:
                    stream.closed = True
                    return
        except Exception as exc:  # recorded per stream and reported
            stream.error = type(exc).__name__

    def with_first_chunk(self) -> int:
        return sum(stream.first_at is not None for stream in self.streams)

    def wait_first_chunks(self, limit: float) -> float:
        """Wait until every stream has its first tick (or failed), at most ``limit`` s; returns seconds waited."""
        end = self.opened_at + limit
        while perf_counter() < end:
            pending = [s for s in self.streams if s.first_at is None and s.error is None and not s.closed]
            if not pending:
                break
            gevent.sleep(0.05)
        return perf_counter() - self.opened_at

    def first_byte_within(self, seconds: float) -> int:
        return sum(
            s.first_at is not None and s.sent_at is not None and s.first_at - s.sent_at <= seconds
            for s in self.streams
        )

    def ticks(self) -> list[int]:
        return [stream.ticks for stream in self.streams]

    def failures(self) -> dict:
        return dict(Counter(stream.error for stream in self.streams if stream.error))

    def close(self) -> None:
        gevent.killall(self.greenlets, timeout=5)
        for stream in self.streams:
            if stream.sock is not None:
                try:
                    stream.sock.close()
                except OSError:
                    pass


def measure_with_streams(
    key: str,
    label: str,
    port: int,
    raw: bytes,
    *,
    count: int,
    wait_limit: float,
    args,
    server_pid: int | None,
    first_byte_window: float | None = None,
) -> Result:
    """Open ``count`` streams, wait for their first chunk, measure ``raw`` meanwhile, report the streams."""
    seconds = math.ceil(wait_limit + WARMUP + args.duration + 15)
    streams = StreamSet(port, count, seconds, read_timeout=seconds + 30)
    streams.open()
    try:
        waited = streams.wait_first_chunks(wait_limit)
        first = streams.with_first_chunk()
        within = streams.first_byte_within(first_byte_window) if first_byte_window else None
        before = streams.ticks()
        window_started = perf_counter()
        result = measure(
            key,
            label,
            port,
            raw,
            connections=args.connections,
            duration=args.duration,
            timeout=args.timeout,
            server_pid=server_pid,
        )
        window = perf_counter() - window_started
        after = streams.ticks()
        alive = [i for i, stream in enumerate(streams.streams) if stream.alive]
        received = [after[i] - before[i] for i in alive]
        expected = math.floor(window)
        result.extra["streams"] = {
            "requested": count,
            "first_chunk": first,
            "first_chunk_wait_s": round(waited, 2),
            "first_byte_within_s": first_byte_window,
            "first_byte_within_count": within,
            "open_at_end": len(alive),
            "ticks_window_s": round(window, 2),
            "ticks_min": min(received) if received else None,
            "ticks_median": statistics.median(received) if received else None,
            "ticks_max": max(received) if received else None,
            "kept_ticking": sum(r >= max(1, expected - 2) for r in received),
            "failures": streams.failures(),
        }
        return result
    finally:
        streams.close()


# ----------------------------------------------------------------- subprocesses


def read_first_line(
    proc: subprocess.Popen, timeout: float, what: str, log_tail, late: str = "not ready"
) -> bytes:
    """The first line of ``proc``'s stdout pipe (without the newline), waiting at most ``timeout`` s.

    Raises BenchError "<what> <late> within <timeout> s" on time-out and "<what> exited with <code>" when the
    pipe ends first; ``log_tail()`` (called only then) is appended to the message.
    """
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"{what} {late} within {timeout:.0f} s{log_tail()}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            data = os.read(fd, 65536)
            if not data:
                proc.wait(timeout=5)
                raise BenchError(f"{what} exited with {proc.returncode}{log_tail()}")
            buf += data
    return buf.split(b"\n", 1)[0]


def log_file_tail(path: str, title: str, size: int, log=None) -> str:
    """The last ``size`` bytes of the log file ``path`` headed "--- <title> (tail) ---" ("" when empty or
    unreadable); ``log``, the open handle writing it, is flushed first."""
    try:
        if log is not None:
            log.flush()
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            text = handle.read().decode("utf-8", "replace").strip()
    except (OSError, ValueError):  # ValueError: ``log`` already closed
        return ""
    return f"\n--- {title} (tail) ---\n{text}" if text else ""


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, at most ``timeout`` s to exit, else SIGKILL; then close its stdout pipe."""
    import subprocess

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if proc.stdout:
        proc.stdout.close()


# ----------------------------------------------------------------- server subprocesses


class ServerProcess:
    """``bench_http.py --serve <kind>`` in its own session; reports its port on its first stdout line."""

    def __init__(
        self, kind: str, script: str, workdir: str, cpu: int | None, database_url: str | None = None
    ):
        self.kind = kind
        self.script = script
        self.workdir = workdir
        self.cpu = cpu
        self.database_url = database_url
        self.proc = None
        self.log = None
        self.info = {}

    @property
    def port(self) -> int:
        return self.info["port"]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> ServerProcess:
        log_path = os.path.join(self.workdir, f"{self.kind}-server.log")
        self.log = open(log_path, "wb")  # closed in stop()
        data_dir = os.path.join(self.workdir, f"{self.kind}-data")
        command = [sys.executable, self.script, "--serve", self.kind, "--data-dir", data_dir]
        if self.cpu is not None:
            command += ["--cpu", str(self.cpu)]
        if self.database_url:
            command += ["--database-url", self.database_url]
        # A session of its own: Ctrl-C reaches only us, and we stop the server in order (terminate, wait).
        import subprocess

        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=os.path.dirname(os.path.dirname(self.script)),
            start_new_session=True,
        )
        try:
            self.info = json.loads(
                read_first_line(
                    self.proc, SERVER_START_TIMEOUT, f"{self.kind} server", self.log_tail, late="did not start"
                )
            )
            self._wait_serving(SERVER_START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        probe = build_request("/api")
        while True:
            try:
                fetch(self.port, probe, 2.0)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(
                        f"{self.kind} server is not answering on port {self.port}{self.log_tail()}"
                    ) from None
                gevent.sleep(0.1)

    def log_tail(self, size: int = 4000) -> str:
        path = os.path.join(self.workdir, f"{self.kind}-server.log")
        return log_file_tail(path, f"{self.kind} server log", size, self.log)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10)
        if self.log is not None:
            self.log.close()
            self.log = None


# ----------------------------------------------------------------- reporting


def fmt_latency(value: float | None, timeout: float) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return f">{timeout:g} s"
    return f"{value * 1000:.1f} ms"


def fmt_row(label: str, result: Result, width: int = 34) -> str:
    return (
        f"{label:<{width}} req/s {result.rps:>7.0f}   p50 {fmt_latency(result.percentile(50), result.timeout):>9}"
        f"   p99 {fmt_latency(result.percentile(99), result.timeout):>9}   {fmt_errors_cpu(result)}"
    )


def fmt_errors_cpu(result: Result) -> str:
    """The end of a row: "errors N (by kind)" and, where known, the server's and load generator's CPU shares."""
    errors = sum(result.errors.values())
    detail = f" ({', '.join(f'{k}: {v}' for k, v in sorted(result.errors.items()))})" if errors else ""
    cpu = ""
    if result.server_cpu is not None:
        cpu = f"   cpu server {result.server_cpu * 100:.0f}% loadgen {result.loadgen_cpu * 100:.0f}%"
    return f"errors {errors}{detail}{cpu}"


def version_of(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe_database(url: str | None) -> str:
    if not url:
        return "sqlite (temporary file)"
    parsed = urlparse(url)
    kind = "postgresql" if parsed.scheme in ("postgres", "postgresql") else parsed.scheme
    where = (
        f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 5432}{parsed.path}"
        if kind == "postgresql"
        else url
    )
    return f"{kind} ({where})"


def header(args, pinning: str, title: str) -> tuple[list[str], dict]:
    now = datetime.now().astimezone()
    meta = {
        "date": now.isoformat(timespec="seconds"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "pinning": pinning,
        "database": (describe_database(args.database_url) if not getattr(args, "compare", False)
                     else "sqlite (temporary file)"),
        "versions": {
            name: version_of(name) for name in ("gevent", "flask", "connexion", "uvicorn", "a2wsgi")
        },
        "connections": args.connections,
        "warmup_s": WARMUP,
        "duration_s": args.duration,
        "request_timeout_s": args.timeout,
    }
    versions = ", ".join(f"{name} {version}" for name, version in meta["versions"].items())
    lines = [
        f"{title}  {now:%Y-%m-%d %H:%M:%S %z}",
        f"python    {meta['python']} on {meta['platform']}",
        f"packages  {versions}",
        f"cpus      {meta['cpu_count']} ({meta['cpu_model']}); {pinning}",
        f"database  {meta['database']}",
        f"load      {args.connections} keep-alive connections per row, {WARMUP:g} s warm-up + {args.duration:g} s "
        f"measured, request timeout {args.timeout:g} s; load generator = this process (gevent, raw sockets)",
    ]
    return lines, meta


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def stream_line(info: dict) -> str:
    return (
        f"  streams: {info['first_chunk']}/{info['requested']} got their first chunk "
        f"(waited {info['first_chunk_wait_s']:.2f} s); during the {info['ticks_window_s']:.1f} s GET /api run each "
        f"open stream received {info['ticks_min']}..{info['ticks_max']} ticks (median {info['ticks_median']}); "
        f"{info['kept_ticking']}/{info['requested']} kept ticking, {info['open_at_end']}/{info['requested']} "
        f"open at the end" + (f"; failures {info['failures']}" if info["failures"] else "")
    )


# ----------------------------------------------------------------- the two modes


def run_main(args, script: str, workdir: str, cpus: tuple, pinning: str) -> dict:
    lines, meta = header(args, pinning, "Cortex HTTP benchmark (one server process)")
    print("\n".join(lines), flush=True)
    server = ServerProcess("cortex", script, workdir, cpus[0], args.database_url)
    rows = []
    try:
        server.start()
        token = server.info["token"]
        list_request = build_request("/api/api-keys", token)
        health_request = build_request("/api")
        status, body = fetch(server.port, list_request, args.timeout)
        items = json.loads(body) if status == 200 else None
        if not isinstance(items, list) or len(items) != API_KEYS:
            raise BenchError(
                f"GET /api/api-keys answered {status} with {body[:300]!r}; expected {API_KEYS} items"
            )
        status, body = fetch(server.port, health_request, args.timeout)
        if status != 200 or json.loads(body).get("status") != "ok":
            raise BenchError(f"GET /api answered {status} with {body[:300]!r}")
        print(
            f"server    pid {server.pid} on {HOST}:{server.port}; verified GET /api/api-keys -> 200 with "
            f"{len(items)} items, GET /api -> 200",
            flush=True,
        )
        print()
        common = dict(
            connections=args.connections, duration=args.duration, timeout=args.timeout, server_pid=server.pid
        )
        sessions_request = build_request(f"/api/projects/{server.info['project']}/sessions", token)
        status, body = fetch(server.port, sessions_request, args.timeout)
        if status != 200 or len(json.loads(body)) != API_KEYS:
            raise BenchError(f"GET …/sessions answered {status} with {body[:300]!r}; expected {API_KEYS} items")
        label_sessions = f"listSessions, {API_KEYS} rows (auth, db)"
        result = measure("list_sessions", label_sessions, server.port, sessions_request, **common)
        rows.append(result)
        print(fmt_row(label_sessions, result), flush=True)
        label_list = f"list {API_KEYS} api keys (auth, db)"
        result = measure("list_api_keys", label_list, server.port, list_request, **common)
        rows.append(result)
        print(fmt_row(label_list, result), flush=True)
        result = measure("health", "GET /api", server.port, health_request, **common)
        rows.append(result)
        print(fmt_row("GET /api", result), flush=True)
        if args.streams:
            label = f"GET /api with {args.streams} open streams"
            result = measure_with_streams(
                "health_with_streams",
                label,
                server.port,
                health_request,
                count=args.streams,
                wait_limit=STREAM_OPEN_TIMEOUT,
                args=args,
                server_pid=server.pid,
            )
            rows.append(result)
            info = result.extra["streams"]
            print(f"{fmt_row(label, result)}   streams open {info['open_at_end']}/{info['requested']}")
            print(stream_line(info), flush=True)
            if info["first_chunk"] < info["requested"]:
                print(
                    f"  WARNING: only {info['first_chunk']}/{info['requested']} streams received their first "
                    f"chunk within {STREAM_OPEN_TIMEOUT:g} s"
                )
    finally:
        server.stop()
    if getattr(args, "prism", None):
        rows.append(measure_prism(args, workdir, cpus[0], rows[0]))
    return {"mode": "single-process", "meta": meta, "rows": [row.as_dict() for row in rows]}


def measure_prism(args, workdir: str, cpu: int | None, cortex_sessions: Result) -> Result:
    """listSessions on the Prism mock server of the same document (``--prism``: the prism command), pinned to the
    server's CPU after the Cortex server stopped; prints the row and Cortex's ratio to it."""
    import shlex
    import subprocess

    from gevent import socket as gsocket

    with gsocket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    spec = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "openapi", "cortex.json")
    log = open(os.path.join(workdir, "prism.log"), "wb")  # noqa: SIM115 - closed below
    command = [*shlex.split(args.prism), "mock", "--host", HOST, "-p", str(port), spec]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True,
                            preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None)
    request = build_request("/api/projects/bench-project/sessions", "prism-accepts-any-bearer-token")
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            try:
                status, _body = fetch(port, request, 2.0)
                if status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the Prism mock did not answer on port {port}"
                                 f"{log_file_tail(os.path.join(workdir, 'prism.log'), 'prism log', 2000, log)}")
            gevent.sleep(0.2)
        label = "listSessions on the Prism mock"
        result = measure("prism_list_sessions", label, port, request, connections=args.connections,
                         duration=args.duration, timeout=args.timeout, server_pid=proc.pid)
        print(fmt_row(label, result), flush=True)
        ratio = cortex_sessions.rps / result.rps if result.rps else float("inf")
        result.extra["cortex_ratio"] = ratio
        print(f"  listSessions: Cortex {cortex_sessions.rps:,.0f} req/s = {ratio:.2f} × the Prism mock "
              f"({result.rps:,.0f} req/s; Prism answers the document's one-row example without a database)",
              flush=True)
        return result
    finally:
        stop_process(proc, timeout=10)
        log.close()


def run_compare(args, script: str, workdir: str, cpus: tuple, pinning: str) -> dict:
    lines, meta = header(args, pinning, "Cortex HTTP benchmark: GET /api across server stacks")
    print("\n".join(lines), flush=True)
    print()
    health_request = build_request("/api")
    rows, notes = [], []
    width = 58

    def stream_row(key, label, server):
        result = measure_with_streams(
            key,
            label,
            server.port,
            health_request,
            count=COMPARE_STREAMS,
            wait_limit=FIRST_BYTE_WINDOW,
            args=args,
            server_pid=server.pid,
            first_byte_window=FIRST_BYTE_WINDOW,
        )
        rows.append(result)
        info = result.extra["streams"]
        print(
            f"{fmt_row(label, result, width)}   streams with first byte within {FIRST_BYTE_WINDOW:g} s "
            f"{info['first_byte_within_count']}/{info['requested']}",
            flush=True,
        )

    def stack_rows(kind: str, name: str, label: str, streams_label: str) -> None:
        """Measure GET /api on one stack, then again with streams open; always stop its server."""
        server = ServerProcess(kind, script, workdir, cpus[0])
        try:
            server.start()
            result = measure(
                name,
                label,
                server.port,
                health_request,
                connections=args.connections,
                duration=args.duration,
                timeout=args.timeout,
                server_pid=server.pid,
            )
            rows.append(result)
            print(fmt_row(label, result, width), flush=True)
            stream_row(f"{name}_streams", streams_label, server)
        finally:
            server.stop()

    stack_rows("cortex", "cortex", "(1) cortex: gevent WSGIServer + Flask + Connexion routes",
               f"    same, {COMPARE_STREAMS} streams open")
    missing = [name for name in ("connexion", "uvicorn", "a2wsgi", "flask") if find_spec(name) is None]
    if missing:
        note = (
            f"skipped connexion.FlaskApp on uvicorn: missing package(s) {', '.join(missing)} "
            "(pip install 'connexion[flask,uvicorn]')"
        )
        notes.append(note)
        print(f"(2)/(3) {note}")
    else:
        stack_rows("connexion", "connexion_uvicorn", "(2) connexion.FlaskApp on uvicorn (out of the box)",
                   f"(3) same, {COMPARE_STREAMS} streams open")
    return {"mode": "compare", "meta": meta, "rows": [row.as_dict() for row in rows], "notes": notes}


METRICS_SLICE = 0.5  # seconds between two switches of --metrics-cost


def alternating_load(port: int, raw: bytes, switch, *, connections: int, duration: float, timeout: float) -> dict:
    """``connections`` greenlets send ``raw`` back to back for WARMUP + ``duration`` seconds while the server's
    state alternates between "on" and "off" every METRICS_SLICE seconds (``switch(state)`` sets it, warm-up "on").
    Each 200 counts for the state in force when it completed, so the machine's drift (steal time, other work) hits
    both states alike. Returns answers and seconds per state, "answered" (every 200, warm-up included), errors."""
    began = perf_counter()
    deadline = began + WARMUP + duration
    current = {"state": None}  # None: warm-up or switching, nothing counted
    tally = {"on": 0, "off": 0, "answered": 0}
    seconds = {"on": 0.0, "off": 0.0}
    errors = Counter()
    switches = {"count": 0}

    def worker():
        connection = None
        while perf_counter() < deadline:
            try:
                if connection is None:
                    connection = HttpConnection(port, timeout)
                status, _body, keep = connection.request(raw)
            except (OSError, ValueError) as exc:  # TimeoutError is an OSError
                errors[type(exc).__name__] += 1
                _close(connection)
                connection = None
                gevent.sleep(0.01)
                continue
            if status != 200:
                errors[f"HTTP {status}"] += 1
            else:
                tally["answered"] += 1
                if current["state"] is not None:
                    tally[current["state"]] += 1
            if not keep:
                _close(connection)
                connection = None
        _close(connection)

    def switcher():
        switch("on")
        gevent.sleep(max(0.0, began + WARMUP - perf_counter()))
        state = "on"
        while perf_counter() + METRICS_SLICE <= deadline:
            switch(state)
            switches["count"] += 1
            current["state"] = state
            started = perf_counter()
            gevent.sleep(METRICS_SLICE)
            current["state"] = None
            seconds[state] += perf_counter() - started
            state = "off" if state == "on" else "on"

    greenlets = [gevent.spawn(switcher)] + [gevent.spawn(worker) for _ in range(connections)]
    gevent.joinall(greenlets, timeout=WARMUP + duration + timeout + 5, raise_error=True)
    gevent.killall(greenlets, timeout=5)
    return {"ok": {state: tally[state] for state in ("on", "off")}, "seconds": seconds,
            "answered": tally["answered"], "switches": switches["count"], "errors": dict(errors)}


def run_metrics_cost(args, script: str, workdir: str, cpus: tuple, pinning: str) -> dict:
    """``--metrics-cost``: what counting a request costs. One server; for listSessions and ``GET /api``,
    ``--rounds`` runs of ``--duration`` seconds each, in which the request metrics switch on (as shipped) and off
    (``cortex.lib.metrics.observe_request`` a no-op, ``POST /bench/metrics/<on|off>``, bench-only) every
    METRICS_SLICE seconds under a steady load, so both states share the machine's drift. The scraped
    ``cortex_http_requests_total`` proves the switch: it grows by at least the answers counted "on" and by less
    than all answers. Loss = 1 - (rate on / rate off), per run and over all runs."""
    lines, meta = header(args, pinning, "Cortex HTTP benchmark: the cost of the request metrics")
    print("\n".join(lines), flush=True)
    print(f"method    one server; in each run the metrics switch on/off every {METRICS_SLICE:g} s under a steady "
          "load; an answer counts for the state in force when it completed", flush=True)
    server = ServerProcess("cortex", script, workdir, cpus[0], args.database_url)
    labels = {"list_sessions": ("listSessions, 50 rows (auth, db)", "listSessions"),
              "health": ("GET /api", "getData")}
    runs = {key: [] for key in labels}
    try:
        server.start()
        requests = {"list_sessions": build_request(f"/api/projects/{server.info['project']}/sessions",
                                                   server.info["token"]),
                    "health": build_request("/api")}

        def switch(state: str) -> None:
            status, _body = fetch(server.port, build_request(f"/bench/metrics/{state}", method="POST"),
                                  args.timeout)
            if status != 200:
                raise BenchError(f"POST /bench/metrics/{state} answered {status}")

        def counted(operation: str) -> float:
            status, body = fetch(server.port, build_request("/metrics"), args.timeout)
            if status != 200:
                raise BenchError(f"GET /metrics answered {status}")
            total = 0.0
            for line in body.decode().splitlines():
                if (line.startswith("cortex_http_requests_total{") and f'operation="{operation}"' in line
                        and 'status="200"' in line):
                    total += float(line.rsplit(" ", 1)[1])
            return total

        print()
        for number in range(args.rounds):
            for key, (label, operation) in labels.items():
                before = counted(operation)
                run = alternating_load(server.port, requests[key], switch, connections=args.connections,
                                       duration=args.duration, timeout=args.timeout)
                added = counted(operation) - before
                ok, seconds = run["ok"], run["seconds"]
                if not ok["on"] <= added < run["answered"] - ok["off"] + args.connections * (run["switches"] + 1):
                    raise BenchError(f"the switch did not work: {added:g} {operation} requests were counted; "
                                     f"{ok['on']} answered with metrics on, {ok['off']} off, {run['answered']} "
                                     "in all")
                run["rps"] = {state: ok[state] / seconds[state] for state in ok if seconds[state]}
                run["loss"] = 1 - run["rps"]["on"] / run["rps"]["off"]
                runs[key].append(run)
                errors = sum(run["errors"].values())
                print(f"run {number + 1:<2} {label:<34} req/s metrics on {run['rps']['on']:>7.0f}   off "
                      f"{run['rps']['off']:>7.0f}   loss {run['loss'] * 100:+5.1f} %   errors {errors}", flush=True)
    finally:
        server.stop()
    summary = {}
    print()
    for key, (label, _operation) in labels.items():
        on = sum(run["ok"]["on"] for run in runs[key]) / sum(run["seconds"]["on"] for run in runs[key])
        off = sum(run["ok"]["off"] for run in runs[key]) / sum(run["seconds"]["off"] for run in runs[key])
        losses = [run["loss"] for run in runs[key]]
        summary[key] = {"rps_on": round(on, 1), "rps_off": round(off, 1), "loss": round(1 - on / off, 4),
                        "run_losses": [round(loss, 4) for loss in losses]}
        print(f"{label:<34} all runs: req/s metrics on {on:>7.0f}   off {off:>7.0f}   loss "
              f"{(1 - on / off) * 100:+.1f} %   (runs {min(losses) * 100:+.1f} … {max(losses) * 100:+.1f} %)")
    return {"mode": "metrics-cost", "meta": meta, "summary": summary, "runs": runs}


def split_cpus() -> tuple[tuple[int | None, int | None], str]:
    """(server CPU, load-generator CPU) and a description; pins this process (the load generator) to the second
    CPU when there are two or more, else leaves both unpinned."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(allowed) < 2:
        return (None, None), "not pinned (fewer than 2 CPUs available): server and load generator share the CPU"
    os.sched_setaffinity(0, {allowed[1]})
    return (allowed[0], allowed[1]), f"server pinned to CPU {allowed[0]}, load generator to CPU {allowed[1]}"


def run(args, script: str, fd_limit: int) -> int:
    """Entry point of the parent process: pin, make a temp dir, run a mode, clean up whatever happens."""
    interrupt_on_sigterm()
    needed = max(args.streams, COMPARE_STREAMS) + args.connections + 64
    if fd_limit < needed:
        print(
            f"bench: the open-file limit is {fd_limit}, fewer than the {needed} sockets needed",
            file=sys.stderr,
        )
        return 2
    cpus, pinning = split_cpus()

    def body(workdir: str) -> tuple[int, dict]:
        mode = run_compare if args.compare else run_metrics_cost if args.metrics_cost else run_main
        return 0, mode(args, script, workdir, cpus, pinning)

    return run_in_workdir(body, prefix="cortex-bench-", as_json=args.json, stopped="servers stopped")


def interrupt_on_sigterm() -> None:
    """In the parent: SIGTERM becomes a KeyboardInterrupt (so the servers are stopped in order), which the gevent
    hub lets reach the main greenlet without printing it first."""

    def on_sigterm(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    hub = gevent.get_hub()
    hub.NOT_ERROR = (*hub.NOT_ERROR, KeyboardInterrupt)


def run_bench(args, body, *, prefix: str) -> int:
    """Entry point of a one-server benchmark's parent: SIGTERM handled, CPUs split, then
    ``body(args, workdir, cpus, pinning) -> (exit code, report)`` in a fresh temporary directory
    (see :func:`run_in_workdir`; ``--json`` prints the report)."""
    interrupt_on_sigterm()
    cpus, pinning = split_cpus()
    return run_in_workdir(lambda workdir: body(args, workdir, cpus, pinning), prefix=prefix, as_json=args.json,
                          stopped="server stopped")


def run_in_workdir(body, *, prefix: str, as_json: bool, stopped: str, keep: bool = False) -> int:
    """``body(workdir) -> (exit code, report)`` in a fresh temporary directory; the exit code of a bench.

    The report is printed as JSON with ``as_json``. A BenchError exits 1 with its message, Ctrl-C (or SIGTERM made
    a KeyboardInterrupt) 130 with "interrupted; <stopped>". The directory is removed afterwards, or with ``keep``
    kept and named on stderr.
    """
    workdir = tempfile.mkdtemp(prefix=prefix)
    try:
        code, report = body(workdir)
        if as_json:
            print()
            print(json.dumps(report, indent=2))
        return code
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"bench: interrupted; {stopped}", file=sys.stderr)
        return 130
    finally:
        if keep:
            print(f"bench: logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# ----------------------------------------------------------------- one-server benchmarks (bench_ingest, ...)


def bench_parser(description: str) -> argparse.ArgumentParser:
    """The argument parser of a benchmark (defaults shown in --help)."""
    return argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_server_options(parser: argparse.ArgumentParser, *, redis_help: str, engines_help: str) -> None:
    """The options of a benchmark that runs one Cortex server subprocess with engines (``--serve cortex``,
    ``--cpu`` and ``--data-dir`` are how ServerProcess starts it) and a calibration row."""
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory")
    parser.add_argument("--redis-url", help=redis_help)
    parser.add_argument("--no-engines", action="store_true", help=engines_help)
    parser.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                        help="skip the GET /api row that shows how much CPU the machine gives the server")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--profile", help="write a cProfile (pstats) of the server process to this file")
    parser.add_argument("--serve", nargs="?", const="cortex", help=argparse.SUPPRESS)  # ServerProcess: --serve cortex
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)


def bench_main(parser: argparse.ArgumentParser, argv, *, serve, body, prefix: str, invalid=None,
               sockets=None) -> int:
    """``main()`` of a one-server benchmark. In the server subprocess (``--serve``): ``serve(args)``. Else exit 2
    when ``invalid(args)`` names a problem with the options or the open-file limit is below ``sockets(args)``,
    then :func:`run_bench` with ``body`` and ``prefix``."""
    args = parser.parse_args(argv)
    if args.serve:  # the server subprocess (ServerProcess starts us as ``--serve cortex --data-dir …``)
        return serve(args)
    problem = invalid(args) if invalid else None
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench_http import raise_fd_limit

    fd_limit = raise_fd_limit()
    needed = sockets(args) if sockets else 0
    if fd_limit < needed:
        print(f"bench: the open-file limit is {fd_limit}, fewer than the {needed} sockets needed", file=sys.stderr)
        return 2
    return run_bench(args, body, prefix=prefix)


def print_header(args, pinning: str, title: str, **meta) -> dict:
    """Print :func:`header`'s lines; its meta with ``meta`` added."""
    lines, described = header(args, pinning, title)
    described.update(meta)
    print("\n".join(lines), flush=True)
    return described


def bench_server(args, script: str, workdir: str, cpus: tuple, env_prefix: str, **env) -> ServerProcess:
    """The (not yet started) Cortex server subprocess of a one-server benchmark; its settings (``REDIS_URL``,
    ``ENGINES``, ``PROFILE`` from the common options, then ``env``) pass through ``<env_prefix><NAME>`` variables,
    which the subprocess inherits and reads back with :func:`server_setting`."""
    env = {"REDIS_URL": args.redis_url or "", "ENGINES": "0" if args.no_engines else "1",
           "PROFILE": os.path.abspath(args.profile) if args.profile else "", **env}
    for name, value in env.items():
        os.environ[f"{env_prefix}{name}"] = str(value)
    return ServerProcess("cortex", script, workdir, cpus[0], args.database_url)


def server_setting(env_prefix: str, name: str, default: str = "") -> str:
    """In the server subprocess: a setting :func:`bench_server` passed."""
    return os.environ.get(f"{env_prefix}{name}", default)


def calibrate(server: ServerProcess, args, meta: dict) -> Result:
    """``GET /api`` for min(--duration, 5) s, printed with docs/performance.md's figure and kept in ``meta``: how
    much CPU the machine gives the server."""
    health = measure("health", "GET /api (calibration, no database)", server.port, build_request("/api"),
                     connections=args.connections, duration=min(args.duration, 5.0), timeout=args.timeout,
                     server_pid=server.pid)
    print(f"\n{fmt_row(health.label, health, 44)}\n  (docs/performance.md figure on a quiet machine: ~4,950 "
          "req/s; a much lower figure means the CPU is shared with other work)")
    meta["calibration_get_api"] = health.as_dict()
    return health


def verdict(mode: str, meta: dict, rows: list, failures: list, target: str) -> tuple[int, dict]:
    """Print PASS/FAIL with ``target`` and the failures; (exit code, the JSON report)."""
    print(f"\n{'PASS' if not failures else 'FAIL'}: {target}" + "".join(f"\n  - {failure}" for failure in failures))
    report = {"mode": mode, "meta": meta, "rows": [row.as_dict() for row in rows], "failures": failures}
    return (0 if not failures else 1), report


# ----------------------------------------------------------------- in a Cortex server subprocess


def start_server_process(cpu: int | None) -> None:
    """First thing of a Cortex server subprocess: pin it to ``cpu``, raise its open-file limit and monkey-patch
    the standard library for gevent, before anything imports socket, threading or ssl."""
    from bench_http import pin_to_cpu, raise_fd_limit

    pin_to_cpu(cpu)
    raise_fd_limit()
    from cortex.http.serve import patch

    patch()


def cortex_app(args, redis_url: str | None = None):
    """(app, settings): the app of ``cortex serve`` (``create_app``) on ``--data-dir`` and ``--database-url``
    (default SQLite there), migrated, with a fresh secret key."""
    import secrets

    from cortex.http.app import create_app
    from cortex.settings import Settings
    from models.database import upgrade

    os.makedirs(args.data_dir, exist_ok=True)  # with_secret_key() only creates it when it generates a key
    settings = Settings.from_env(
        env={"CORTEX_LOG_LEVEL": "WARNING"},  # not os.environ: a DATABASE_URL in the shell must not leak in
        data_dir=args.data_dir,
        database_url=args.database_url or None,
        secret_key=secrets.token_urlsafe(48),
        redis_url=redis_url or None,
    )
    app = create_app(settings)
    upgrade()
    return app, settings


def bench_user():
    """A new user with a tenant of its own (inside ``db.connection_context()``); :func:`remove_tenant` removes it."""
    import secrets

    from models.identity import create_user

    return create_user(f"bench-{secrets.token_hex(6)}@bench.invalid", secrets.token_urlsafe(16), "Bench User")


def serve_app(app, settings, info: dict, *, user=None, engines: bool = False, profile: str | None = None,
              cleanup=None) -> int:
    """Serve ``app`` (``make_server``) on 127.0.0.1 until SIGTERM, SIGINT or the parent is gone; 0.

    Prints ``{"port", "pid", **info}`` (plus ``"token"``, an access token of ``user``) on one stdout line first:
    ServerProcess reads it. ``engines``: with the engines ``cortex serve`` starts; ``profile``: a pstats file of
    the serving process (all greenlets). Afterwards ``user``'s tenant is removed (:func:`remove_tenant`, which
    calls ``cleanup(user)`` first), leaving a reused (PostgreSQL) database as it was.
    """
    from bench_http import exit_with_parent
    from gevent.event import Event

    from cortex.http import security
    from cortex.http.serve import flush_metrics, make_server

    running = None
    if engines:
        from cortex.engines import SERVE, start_engines

        running = start_engines(SERVE, settings)  # as `cortex serve` runs them
        app.extensions["cortex"].fanout = running.fanout
    server = make_server(app, HOST, 0)
    server.start()
    gevent.spawn(flush_metrics)  # as `cortex serve` does (PROMETHEUS_MULTIPROC_DIR)
    stop = Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    exit_with_parent(stop.set)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    if user is not None:
        info = {"token": security.issue_access_token(user.id, user.tenant_id), **info}
    print(json.dumps({"port": server.server_port, "pid": os.getpid(), **info}), flush=True)
    try:
        stop.wait()
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        server.stop(timeout=1)
        if running is not None:
            running.stop()
        if user is not None:
            remove_tenant(user, cleanup)
    return 0


def remove_tenant(user, cleanup=None) -> None:
    """Delete what a bench seeded under ``user``'s tenant (``cleanup(user)`` first, for rows the cascades from
    projects miss), best effort: a failure is printed on stderr."""
    from models.base import db
    from models.events import DomainEvent
    from models.identity import Project, Tenant, User

    try:
        with db.connection_context():
            if cleanup is not None:
                cleanup(user)
            DomainEvent.delete().where(DomainEvent.tenant_id == user.tenant_id).execute()
            User.delete().where(User.id == user.id).execute()
            Project.delete().where(Project.tenant == user.tenant_id).execute()  # cascades to the rest
            Tenant.delete().where(Tenant.id == user.tenant_id).execute()
    except Exception as exc:  # best effort on the way out
        print(f"bench: could not remove the seeded tenant {user.tenant_id}: {exc}", file=sys.stderr)
