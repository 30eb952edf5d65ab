"""Long-lived streams must not starve other requests on the real serving stack (gevent, one greenlet each).

The server runs in a subprocess because gevent's monkey-patching has to happen before anything else is
imported. 200 open streams would exhaust any thread pool (a 10-worker server hangs on the first ``GET /api``);
on gevent every ``GET /api`` must still answer at once.
"""

from __future__ import annotations

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

    from cortex.serve import patch

    patch()

    import time
    from pathlib import Path

    import flask

    from cortex.app import create_app
    from cortex.db import upgrade
    from cortex.serve import make_server
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


    server = make_server(app, "127.0.0.1", 0)
    server.start()
    print(server.server_port, flush=True)
    server.serve_forever()
    """
)


@pytest.fixture
def server(tmp_path):
    """Start the program; yields its port; always terminates it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * STREAMS + 256  # client and server ends live in different processes; this is ample for either
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))  # inherited by the server too
    script = tmp_path / "stream_server.py"
    script.write_text(SERVER)
    data_dir = tmp_path / "data"
    errors = open(tmp_path / "server.err", "w+")
    process = subprocess.Popen(
        [sys.executable, str(script), str(data_dir)], stdout=subprocess.PIPE, stderr=errors, text=True
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
