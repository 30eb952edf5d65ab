"""Long-lived streams must not starve other requests on the real serving stack (gevent, one greenlet each).

The server runs in a subprocess because gevent's monkey-patching has to happen before anything else is
imported. 200 open streams would exhaust any thread pool (a 10-worker server hangs on the first ``GET /api``);
on gevent every ``GET /api`` must still answer at once.
"""

from __future__ import annotations

import contextlib
import http.client
import resource
import socket
import subprocess
import sys
import textwrap
import time

import pytest

STREAMS = 200
REQUESTS = 50

SERVER = textwrap.dedent(
    """
    import sys

    from cortex.http.serve import patch

    patch()

    import time
    from pathlib import Path

    import flask

    from cortex.http.app import create_app
    from models.database import upgrade
    from cortex.http.serve import make_server
    from cortex.settings import Settings

    data_dir = Path(sys.argv[1])
    settings = Settings(
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'cortex.db'}",
        secret_key="serving-test-secret-key-0123456789",
    )
    app = create_app(settings)
    upgrade()


    @app.get("/test/stream")
    def stream():
        def ticks():
            for _ in range(40):  # 20 s
                yield b": tick\\n\\n"
                time.sleep(0.5)

        return flask.Response(ticks(), mimetype="text/event-stream")


    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else None
    server = make_server(app, "127.0.0.1", 0, client_timeout=timeout)
    server.start()
    print(server.server_port, flush=True)
    server.serve_forever()
    """
)


@pytest.fixture
def server(tmp_path):
    """Start the program; yields its port; always terminates it."""
    with running_server(tmp_path) as port:
        yield port


@pytest.fixture
def strict_server(tmp_path):
    """The program with a client timeout of 0.5 s."""
    with running_server(tmp_path, "0.5") as port:
        yield port


@contextlib.contextmanager
def running_server(tmp_path, *args: str):
    """Run the program (extra ``args`` after the data dir); yields its port; always terminates it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * STREAMS + 256  # client and server ends live in different processes; this is ample for either
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))  # inherited by the server too
    script = tmp_path / "stream_server.py"
    script.write_text(SERVER)
    data_dir = tmp_path / "data"
    errors = open(tmp_path / "server.err", "w+")
    process = subprocess.Popen(
        [sys.executable, str(script), str(data_dir), *args], stdout=subprocess.PIPE, stderr=errors, text=True
    )
    try:
        line = process.stdout.readline()  # the port, once listening
        if not line.strip().isdigit():
            process.wait(timeout=10)
            errors.seek(0)
            pytest.fail(f"stream server did not start (exit {process.returncode}): {errors.read()}")
        yield int(line)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        process.stdout.close()
        errors.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_stream(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /test/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
    return sock


def first_tick(sock: socket.socket) -> bytes:
    """Read until the first tick arrived (status line and headers come first)."""
    received = b""
    while b": tick" not in received:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"stream closed before its first tick: {received!r}")
        received += chunk
    return received


def test_open_streams_do_not_starve_other_requests(server):
    started = time.monotonic()
    streams = []
    try:
        streams = [open_stream(server) for _ in range(STREAMS)]
        for sock in streams:
            received = first_tick(sock)
            assert received.startswith(b"HTTP/1.1 200"), received[:200]
            assert b"text/event-stream" in received
        opened = time.monotonic() - started

        durations = []
        for _ in range(REQUESTS):  # a new connection each: accepting must not be starved either
            begin = time.monotonic()
            connection = http.client.HTTPConnection("127.0.0.1", server, timeout=5)
            try:
                connection.request("GET", "/api")
                response = connection.getresponse()
                body = response.read()
            finally:
                connection.close()
            durations.append(time.monotonic() - begin)
            assert response.status == 200, body
            assert b'"status":"ok"' in body.replace(b" ", b"")
        assert len(durations) == REQUESTS
        assert max(durations) < 1.0, f"slowest GET /api took {max(durations):.3f} s with {STREAMS} streams open"

        # The streams are still alive and ticking while (and after) the other requests were served.
        for sock in streams[:: STREAMS // 10]:
            assert b": tick" in sock.recv(4096)
        assert opened < 10, f"opening {STREAMS} streams took {opened:.1f} s"
    finally:
        for sock in streams:
            sock.close()


def test_a_client_that_neither_sends_nor_reads_is_disconnected_after_the_client_timeout(strict_server):
    """CORTEX_CLIENT_TIMEOUT: an idle connection is closed by the server; a request on a fresh one still works."""
    idle = socket.create_connection(("127.0.0.1", strict_server), timeout=10)
    started = time.monotonic()
    try:
        assert idle.recv(1) == b""  # closed by the server, not by our 10 s timeout
    finally:
        idle.close()
    assert time.monotonic() - started < 5
    with socket.create_connection(("127.0.0.1", strict_server), timeout=5) as fresh:
        fresh.sendall(b"GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert fresh.recv(64).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("size", [512 * 1024, 100 * 1024 * 1024])  # within CORTEX_MAX_BODY_BYTES, and beyond
@pytest.mark.parametrize("path,headers", [
    ("/api/api-keys", b""),  # no credentials
    ("/api/api-keys", b"Authorization: Bearer not-a-token\r\n"),  # a bad one
    ("/api/events/ingest", b""),  # signed ingest without its signature headers
])
def test_credentials_are_checked_before_the_body_is_read(server, path, headers, size):
    """A request that announces a large body without valid credentials is answered 401 at once — not 413, and
    without the server waiting for the body (one byte of it is sent) or buffering it."""
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {size}\r\n".encode() + headers + b"\r\n" + b"{")
        answer = b""
        while b"\r\n\r\n" not in answer:  # a server waiting for the body would time out here
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer: {answer!r}"
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_max_connections_bounds_the_connections_one_process_serves_at_once(servers):
    """CORTEX_MAX_CONNECTIONS: with 2 connections held open (keep-alive), a third is not served until one of them
    closes; then it is, at once."""
    [cortex] = servers(1, None, CORTEX_MAX_CONNECTIONS="2")
    request = b"GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    held = []
    for _ in range(2):
        sock = socket.create_connection(("127.0.0.1", cortex.port), timeout=5)
        sock.sendall(request)
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
        held.append(sock)  # kept alive: the server waits for its next request
    waiting = socket.create_connection(("127.0.0.1", cortex.port), timeout=1)
    try:
        waiting.sendall(request)
        with pytest.raises(TimeoutError):
            waiting.recv(64)  # the pool is full: nobody reads this connection yet
        held.pop().close()
        waiting.settimeout(5)
        assert waiting.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        waiting.close()
        for sock in held:
            sock.close()
