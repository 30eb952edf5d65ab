"""Event streams on real `cortex serve` processes (gevent server, live dispatcher, LiveFanout).

- Two processes sharing one database (the test's: SQLite file or PostgreSQL) and one Redis: an event caused
  through process A arrives on a stream opened on process B, once, although both processes' dispatchers
  publish it; B resumes with Last-Event-ID from the log. Needs ``REDIS_URL`` (skipped without it: the
  cross-process fan-out is Redis).
- One process without Redis: the production push path (an event caused through the API reaches an open stream
  at once, woken by the write, not by the dispatcher's next poll).

The servers come from the ``servers`` fixture (``tests/conftest.py``).
"""

from __future__ import annotations

import http.client
import json
import os
import time

import orjson
import pytest

from cortex.events.fanout import BATCH_TYPE, CHANNEL

READ_TIMEOUT = 20.0


class Stream:
    """An SSE response read over a real socket; frames parsed as the SSE specification does."""

    def __init__(self, server, path: str, headers: dict):
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=READ_TIMEOUT)
        self.connection.request("GET", path, headers={**headers, "Accept": "text/event-stream"})
        self.response = self.connection.getresponse()
        assert self.response.status == 200, self.response.read()
        assert self.response.getheader("Content-Type").startswith("text/event-stream")
        self.buffer = b""
        first = self.frame()
        assert first == {"retry": "3000"}, first

    def frame(self) -> dict:
        """The next frame's fields ({} for a comment-only frame); fails when nothing comes in time."""
        while b"\n\n" not in self.buffer:
            chunk = self.response.read1(65536)
            if not chunk:
                raise AssertionError(f"stream ended; unread {self.buffer!r}")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\n\n", 1)
        fields = {}
        for line in raw.decode().split("\n"):
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        return fields

    def events_until(self, last_id: str) -> list[dict]:
        """Every event frame up to and including the one with id ``last_id``."""
        events = []
        deadline = time.monotonic() + READ_TIMEOUT
        while time.monotonic() < deadline:
            fields = self.frame()
            if "data" in fields:
                events.append(fields)
                if fields["id"] == last_id:
                    return events
        raise AssertionError(f"event {last_id} did not arrive; got {events}")

    def close(self) -> None:
        self.connection.close()


def create_participant(server, member, name: str) -> dict:
    status, body = server.request(
        "POST", f"/api/projects/{member.project.id}/participants", {"externalUserId": name}, member.headers
    )
    assert status == 201, body
    return json.loads(body)


def event_id_of(participant: dict) -> str:
    from models.events import DomainEvent

    return DomainEvent.get(DomainEvent.resource_id == f"participant:{participant['id']}").id


def test_event_caused_on_one_process_reaches_a_stream_on_another(servers, owner):
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        pytest.skip("REDIS_URL is not set: the cross-process fan-out goes through Redis")
    import redis

    a, b = servers(2, redis_url)
    channel = redis.Redis.from_url(redis_url, socket_timeout=READ_TIMEOUT).pubsub()
    channel.subscribe(CHANNEL)
    stream = Stream(b, "/api/events/stream", owner.headers)
    try:
        started = time.monotonic()
        first = create_participant(a, owner, "caused on A")
        first_id = event_id_of(first)
        [received] = stream.events_until(first_id)  # exactly one event: nothing else, no duplicate
        latency = time.monotonic() - started
        assert received["event"] == "participant.created"
        assert json.loads(received["data"])["payload"]["data"]["id"] == first["id"]

        # the channel carried it in flask-sse's message format, with the log position beside the envelope
        deadline = time.monotonic() + READ_TIMEOUT
        pairs = []
        while time.monotonic() < deadline and not any(p[1]["id"] == first_id for p in pairs):
            message = channel.get_message(timeout=1)
            if message and message["type"] == "message":
                body = orjson.loads(message["data"])
                if body.get("type") == BATCH_TYPE:
                    pairs += body["data"]
        [(seq, item)] = [p for p in pairs if p[1]["id"] == first_id][:1]
        assert isinstance(seq, int) and item["type"] == "participant.created" and "seq" not in item

        # both processes' dispatchers publish every event: B still delivers each once, in order
        more = [create_participant(a if i % 2 else b, owner, f"more {i}") for i in range(4)]
        events = stream.events_until(event_id_of(more[-1]))
        assert [json.loads(e["data"])["payload"]["data"]["id"] for e in events] == [p["id"] for p in more]
        stream.close()

        # disconnected: two events caused on A; B replays them from the log, then goes on live
        missed = [create_participant(a, owner, f"missed {i}") for i in range(2)]
        stream = Stream(b, "/api/events/stream", {**owner.headers, "Last-Event-ID": event_id_of(more[-1])})
        live = create_participant(a, owner, "live again")
        events = stream.events_until(event_id_of(live))
        assert [json.loads(e["data"])["payload"]["data"]["id"] for e in events] == [
            missed[0]["id"],
            missed[1]["id"],
            live["id"],
        ]
    finally:
        stream.close()
        channel.close()
    print(f"cross-process delivery: {latency * 1000:.1f} ms")  # informational (pytest -s)


def test_real_server_pushes_events_to_open_streams_without_redis(servers, owner):
    [server] = servers(1, None)
    streams = [Stream(server, "/api/events/stream", owner.headers) for _ in range(3)]
    project_stream = Stream(server, f"/api/projects/{owner.project.id}/events/stream?types=participant.*", owner.headers)
    try:
        started = time.monotonic()
        created = create_participant(server, owner, "pushed")
        created_id = event_id_of(created)
        for stream in [*streams, project_stream]:
            [received] = stream.events_until(created_id)
            assert json.loads(received["data"])["payload"]["data"]["externalUserId"] == "pushed"
        latency = time.monotonic() - started
        # woken by the write (not the dispatcher's 0.25 s poll); generous bound for a loaded CI machine
        assert latency < 5, latency
    finally:
        for stream in [*streams, project_stream]:
            stream.close()
    status, _ = server.request("GET", "/api")
    assert status == 200
    print(f"in-process delivery to 4 streams: {latency * 1000:.1f} ms")
