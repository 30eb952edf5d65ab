"""``cortex serve --workers N`` (``cortex.http.workers``): one port, N real serving processes, one supervisor.

What a production operator relies on: both workers answer on the one port; a write through one is read through
the other; an event caused on either reaches a stream open on either; ``/metrics`` adds up every worker; a worker
killed with SIGKILL is replaced while the port keeps answering; SIGTERM stops everything cleanly; a supervisor
killed with SIGKILL leaves no orphan serving the port.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time

from cortex.lib.metrics import FLUSH_INTERVAL
from tests.test_observability import answered, settled
from tests.test_sse_redis import Stream, create_participant, event_id_of

WAIT = 30.0


def worker_pids(server) -> set[int]:
    """The supervisor's live child processes (its workers)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == server.process.pid and fields[0] != "Z":
                pids.add(int(entry))
    return pids


def request_ids(server, count: int, threads: int = 8) -> list[str]:
    """``count`` GET /api over ``threads`` concurrent connections; the X-Request-Id of each answer."""
    import http.client

    ids: list[str] = []
    lock = threading.Lock()

    def run(share: int) -> None:
        for _ in range(share):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            connection.request("GET", "/api")
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            with lock:
                ids.append(response.getheader("X-Request-Id"))
            connection.close()

    workers = [threading.Thread(target=run, args=(count // threads,)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT)
    return ids


def until(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_two_workers_share_the_port_the_data_the_events_and_the_metrics(servers, owner):
    redis_url = os.environ.get("REDIS_URL")
    [server] = servers(1, redis_url, args=("--workers", "2"))
    assert len(until(lambda: len(worker_pids(server)) == 2 and worker_pids(server), "two workers")) == 2
    assert re.search(r"cortex serve: 2 worker processes on http://127\.0\.0\.1:\d+", server.log_text())

    # both answer on the one port (a request id starts with its process's random prefix)
    prefixes: set[str] = set()
    until(lambda: prefixes.update(i[:16] for i in request_ids(server, 40)) or len(prefixes) >= 2,
          "answers from both workers")

    # /metrics of whichever worker answers counts every worker's requests (the supervisor's PROMETHEUS_MULTIPROC_DIR;
    # each worker writes its request counts there every FLUSH_INTERVAL seconds)
    time.sleep(FLUSH_INTERVAL + 0.5)  # every request so far is written
    before = answered(server)
    assert len(request_ids(server, 48)) == 48
    assert settled(server, lambda server: answered(server) - before, 48) == 48

    # writes through one worker are read through the other; their events reach a stream on either, once each
    stream = Stream(server, "/api/events/stream?types=participant.created", owner.headers)
    try:
        created = [create_participant(server, owner, f"worker-test {i}") for i in range(8)]  # new connection each
        for participant in created:
            status, body = server.request("GET", f"/api/projects/{owner.project.id}/participants/{participant['id']}",
                                          headers=owner.headers)
            assert status == 200 and json.loads(body)["id"] == participant["id"]
        events = stream.events_until(event_id_of(created[-1]))
        assert [json.loads(e["data"])["payload"]["data"]["id"] for e in events] == [p["id"] for p in created]
    finally:
        stream.close()


def test_a_killed_worker_is_replaced_and_sigterm_stops_everything(servers, owner):
    [server] = servers(1, None, args=("--workers", "2"))
    first = until(lambda: len(worker_pids(server)) == 2 and worker_pids(server), "two workers")
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    for _ in range(20):  # the port keeps answering meanwhile: the other worker takes every connection
        assert server.request("GET", "/api")[0] == 200
    replaced = until(lambda: (pids := worker_pids(server)) and len(pids) == 2 and victim not in pids and pids,
                     "a new worker in place of the killed one")
    assert len(replaced - first) == 1
    assert "exited with status -9; starting another in 1 s" in server.log_text()
    assert len({i[:16] for i in request_ids(server, 16)}) >= 1

    stream = Stream(server, "/api/events/stream", owner.headers)
    server.process.send_signal(signal.SIGTERM)
    rest = b""
    while chunk := stream.response.read1(65536):  # the stream is ended, not left for the 5 s grace
        rest += chunk
    stream.close()
    assert rest.endswith(b": closed (stopped)\n\n"), rest
    assert server.process.wait(timeout=WAIT) == 0
    for pid in replaced:
        until(lambda pid=pid: not os.path.exists(f"/proc/{pid}") or _zombie(pid), f"worker {pid} gone")
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0  # nobody listens any more


def test_workers_stop_when_the_supervisor_is_killed(servers):
    [server] = servers(1, None, args=("--workers", "2"))
    pids = until(lambda: len(worker_pids(server)) == 2 and worker_pids(server), "two workers")
    server.process.kill()
    server.process.wait(timeout=WAIT)
    for pid in pids:
        until(lambda pid=pid: not os.path.exists(f"/proc/{pid}") or _zombie(pid), f"orphaned worker {pid} gone")


def test_workers_must_be_positive(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "cortex.cli", "serve", "--workers", "0"], capture_output=True,
                          text=True, timeout=WAIT, env={**os.environ, "CORTEX_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2 and "--workers must be at least 1" in done.stderr


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_cortex_workers_is_the_default_of_workers(monkeypatch, tmp_path):
    import subprocess
    import sys

    from cortex.cli import build_parser

    monkeypatch.setenv("CORTEX_WORKERS", "3")
    assert build_parser().parse_args(["serve"]).workers == 3
    assert build_parser().parse_args(["serve", "--workers", "2"]).workers == 2
    done = subprocess.run([sys.executable, "-m", "cortex.cli", "serve"], capture_output=True, text=True,
                          timeout=WAIT, env={**os.environ, "CORTEX_WORKERS": "many", "CORTEX_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2 and "argument --workers: invalid int value: 'many'" in done.stderr
