#!/usr/bin/env python3
"""Soak test: two ``cortex serve`` processes and one ``cortex worker`` on PostgreSQL + Redis under a mixed load,
then the invariants that must hold however the requests interleave.

Set-up (everything on 127.0.0.1; a temporary directory holds the logs, the data directory and the Prometheus
multi-process directory, and is removed afterwards unless ``--keep``):

- ``cortex db upgrade`` migrates the database once (a fresh one too), then ``cortex admin create-user`` and
  ``create-project`` seed a user with a unique e-mail and two projects: *main* (the mixed load) and *burst* (the
  rate-limit phase). The database may hold other data: every name is unique and every check reads only the
  seeded tenant.
- Two ``cortex serve`` (separate ports) and one ``cortex worker``, as a production deployment with a worker runs
  them (README "Configuration"): the same ``DATABASE_URL``, ``REDIS_URL``, ``CORTEX_SECRET_KEY`` and
  ``PROMETHEUS_MULTIPROC_DIR``, ``CORTEX_WEBHOOK_WORKER=false`` on the servers (the worker delivers),
  ``CORTEX_FUNCTIONS_RUNTIME=false`` (no Node.js), and ``CORTEX_OUTBOUND_ALLOW_PRIVATE=true`` for these processes
  only (the webhook receiver is on loopback). ``CORTEX_SSE_MAX_SECONDS`` is lowered (``--sse-max-seconds``) so that
  streams end and resume with ``Last-Event-ID`` several times during a run.
- Over the API (both processes): log in, app settings (voice, an ODIN access key, ``access_key`` provider), the
  secrets synced for signed ingest, sessions to ingest into, participants, gatherings (``maxMembers`` 3), two
  webhook subscriptions to a receiver in this process (``*`` and ``session.*``/``gathering.*``/``participant.*``;
  it checks every Standard Webhooks signature and records each delivery's event id), and a marker event (a
  signed ingest) whose id every SSE subscriber sends as ``Last-Event-ID``: each is owed every matching event after
  it, exactly once and in log order.

Mixed load for ``--duration`` seconds (gevent greenlets on raw keep-alive sockets, ``tools/_loadgen.py``; every
request goes to one of the two processes at random): sessions created and some stopped, signed ingest
(``participant.joined``/``.left``, ``message.created``), gathering players (more players than seats) joining by
code and leaving, a rush every few seconds (8 players join one new gathering of 3 at the same moment, across both
processes), reads, and ``--subscribers`` SSE streams on EACH process (``GET /api/events/stream``, several
filters) that reconnect with ``Last-Event-ID`` whenever a stream ends. Then a burst of signed ingests for the
burst project, fired at the start of one clock second through both processes.

After a bounded drain (every webhook delivery recorded, every stream caught up with the log) the invariants are
checked by pure functions of what was recorded (``check_*``; ``tests/test_soak.py`` feeds them fabricated
observations). The log itself (``domain_event`` of the seeded tenant, read with the models) is the reference:

1. **no 5xx**: no answer of any request the tool sent had a 5xx status (or went unanswered), and the servers'
   ``cortex_http_requests_total`` (``/metrics``, all processes) counts no 5xx either;
2. **every event once**: each webhook endpoint received every event of the main project logged after its
   subscription started (``start_seq``) that its patterns match, exactly once, with a valid signature; each SSE
   subscriber received every event of the tenant after the marker that its filter matches, exactly once, in
   ``seq`` order, and nothing else;
3. **gathering capacity**: replaying ``gathering.member.joined``/``.left`` in log order never seats more than
   ``maxMembers``; no join answered a ``memberCount`` above it; each gathering's final ``memberCount`` equals its
   seated members and the client's joins minus leaves; in a rush exactly ``min(capacity, joiners)`` joins succeed;
4. **ingest rate limit shared**: in the burst, the ingests answered within one clock second are accepted at most
   ``RATE_LIMIT`` (100) times in total across both processes, the rest answered 429 with ``Retry-After``; the
   burst must put more than the limit into one second through both processes, or the check is inconclusive
   (a failure).

Prints a summary (requests per operation with status counts and p50/p99, events, deliveries, streams, gatherings,
the burst) and each violated invariant; ``--json`` prints the figures as JSON too. Exit status 0 when every
invariant holds, 1 when one does not (the servers' and worker's log tails are printed then), 2 without a
PostgreSQL ``--database-url`` and a ``--redis-url`` (or ``DATABASE_URL``/``REDIS_URL``), 130 when interrupted.
The seeded tenant is deleted from the database after a passing or interrupted run (kept after a failure, to be
looked at, and with ``--keep``). The processes get an access-token lifetime longer than the run (its one token
drives every request and stream).

Usage:
    tools/soak.py --database-url postgresql://postgres@127.0.0.1:5432/cortex_soak \\
                  --redis-url redis://127.0.0.1:6379/9 --duration 60 [--json] [--keep]
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote, urlparse

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
sys.path.insert(0, TOOLS)
import _loadgen  # noqa: E402 - gevent without monkey-patching; the load generator's raw HTTP client

HOST = "127.0.0.1"
RATE_LIMIT = 100  # cortex.events.ingest.RATE_LIMIT: signed ingests per project and one-second window
CAPACITY = 3  # maxMembers of every soak gathering
PLAYERS_PER_GATHERING = 5  # more players than seats
RUSH_JOINERS = 8  # players that join a new gathering at the same moment
RUSH_INTERVAL = 6.0  # seconds between two rushes
BURST = 250  # signed ingests fired in the rate-limit burst
BURST_CONNECTIONS = 50  # half to each serving process
BURST_ATTEMPTS = 3  # bursts at most, until one put more than the limit into one second
NEVER_DELIVERED = "webhook.delivery.updated"  # streamed, never sent to webhooks
START_TIMEOUT = 90.0  # seconds for a process to come up, a CLI command to finish
REQUEST_TIMEOUT = 30.0
#: A keep-alive connection idle this long is not reused: the server closes idle ones after CORTEX_CLIENT_TIMEOUT
#: (60 s), and a request sent just as it does is reset without an answer (the race every HTTP/1.1 client has).
IDLE_REUSE = 20.0
SSE_READ_TIMEOUT = 60.0  # a stream sends a heartbeat every 15 s
USERS_PER_SESSION = 12  # external users the ingest load speaks as, per session
HOOKS = {"all": ["*"], "lifecycle": ["session.*", "gathering.*", "participant.*"]}
#: The SSE subscribers' filters, per serving process: (name, types, resources); "{session}" is the first ingest
#: session's id.
STREAM_FILTERS = [
    ("all", None, None),
    ("gatherings", "gathering.*", None),
    ("sessions", "session.created,session.updated,participant.*", None),
    ("one-session", None, "session:{session}"),
]


class SoakError(Exception):
    """The soak cannot go on (a process did not start, a set-up request failed, ...)."""


# ======================================================================== observations and the invariants
# Everything below up to "the run" is pure: the checks take what was recorded and return the violations.


@dataclass(frozen=True)
class LogEvent:
    """One event of the log (``domain_event``), as the checks need it."""

    seq: int
    id: str
    project_id: str | None
    type: str
    resource_id: str
    data: dict | None = None  # payload.data, for gathering.member.* events only


@dataclass
class StreamRecord:
    """What one SSE subscriber received, over all its connections."""

    name: str
    port: int
    types: str | None
    resources: str | None
    after_seq: int  # the marker's seq: every matching event after it is owed
    received: list[str] = field(default_factory=list)  # event ids, in arrival order
    connections: int = 0
    ends: Counter = field(default_factory=Counter)  # why its streams ended ("max-duration", "eof", ...)


@dataclass
class HookRecord:
    """What one webhook endpoint (one subscription) received."""

    name: str
    project_id: str
    patterns: list[str]
    start_seq: int  # the subscription's log position: events after it are owed
    received: list[str] = field(default_factory=list)  # envelope ids, in arrival order
    bad_signatures: int = 0


@dataclass
class GatheringRecord:
    """One soak gathering and what the clients saw of it."""

    id: str
    code: str
    capacity: int
    kind: str = "players"  # "players" (join/leave loops) or "rush"
    joins: int = 0  # joins answered 200 (each a new seat: a player joins only while not seated)
    full: int = 0  # joins answered 409
    leaves: int = 0  # removals answered 204
    joiners: int = 0  # rush: players that fired a join
    max_answered: int = 0  # the highest memberCount a join answered
    final_count: int | None = None  # memberCount read after the run
    final_seated: int | None = None  # members listed joined or ready after the run


@dataclass(frozen=True)
class BurstRequest:
    """One signed ingest of the rate-limit burst."""

    port: int
    sent: float  # time.time() when sent
    answered: float  # time.time() when the answer arrived
    status: int
    retry_after: str | None


def types_match(types: str | None, event_type: str) -> bool:
    """The ``types`` filter of a stream (docs/realtime-and-webhooks.md): comma-separated exact types or prefixes
    ending in ``*``; ``*`` alone, or no item at all, is every type."""
    items = [item.strip() for item in (types or "").split(",") if item.strip()]
    if not items or "*" in items:
        return True
    for item in items:
        if item.endswith("*") and "*" not in item[:-1]:
            if event_type.startswith(item[:-1]):
                return True
        elif item == event_type:
            return True
    return False


def resources_match(resources: str | None, resource_id: str) -> bool:
    """The ``resources`` filter of a stream: comma-separated resourceIds matched exactly; none is every one."""
    items = [item.strip() for item in (resources or "").split(",") if item.strip()]
    return not items or resource_id in items


def pattern_matches(patterns: list[str], event_type: str) -> bool:
    """A webhook subscription's ``events``: exact types or patterns where ``*`` is any run of characters."""
    return any(re.fullmatch(".*".join(re.escape(part) for part in pattern.split("*")), event_type)
               for pattern in patterns)


def _ids(values, limit: int = 5) -> str:
    values = list(values)
    shown = ", ".join(str(value) for value in values[:limit])
    return shown + (f", … ({len(values)} in all)" if len(values) > limit else "")


def stream_owed(record: StreamRecord, events: list[LogEvent], cutoff: int) -> list[LogEvent]:
    """The events a subscriber is owed: after its marker, up to ``cutoff``, matching its filter (``events``: the
    tenant's log, every event of which the seeded user may see)."""
    return [event for event in events
            if record.after_seq < event.seq <= cutoff and types_match(record.types, event.type)
            and resources_match(record.resources, event.resource_id)]


def _once_each(label: str, owed: list[str], received: list[str], by_id: dict, cutoff: int,
               words: tuple[str, str, str]) -> tuple[list[str], list[str]]:
    """(problems, duplicated ids) of one receiver: ``owed`` ids (log order) that never came, ids that came more
    than once, and ids it was not owed (events after ``cutoff`` excepted); ``words`` name the three."""
    owed_set, counts = set(owed), Counter(received)
    problems = []
    lost = [event_id for event_id in owed if event_id not in counts]
    if lost:
        problems.append(f"{label}: {len(lost)} of {len(owed)} {words[0]}: {_ids(lost)}")
    duplicated = sorted(event_id for event_id, count in counts.items() if count > 1)
    if duplicated:
        problems.append(f"{label}: {len(duplicated)} {words[1]}: {_ids(duplicated)}")
    unexpected = [event_id for event_id in counts if event_id not in owed_set
                  and not (event_id in by_id and by_id[event_id].seq > cutoff)]
    if unexpected:
        problems.append(f"{label}: {len(unexpected)} {words[2]}: {_ids(unexpected)}")
    return problems, duplicated


def check_stream(record: StreamRecord, events: list[LogEvent], cutoff: int) -> list[str]:
    """Invariant 2 for one SSE subscriber: every owed event once, in log order, and nothing else."""
    label = f"SSE {record.name} (port {record.port})"
    by_id = {event.id: event for event in events}
    owed = [event.id for event in stream_owed(record, events, cutoff)]
    problems, duplicated = _once_each(label, owed, record.received, by_id, cutoff, (
        "owed events never arrived", "events arrived more than once",
        "events arrived that its filter or position does not owe it"))
    seqs = [by_id[event_id].seq for event_id in record.received if event_id in by_id]
    disorder = [(a, b) for a, b in zip(seqs, seqs[1:], strict=False) if b <= a]
    if disorder and not duplicated:
        problems.append(f"{label}: events out of log order {len(disorder)} times (seq {disorder[0][0]} "
                        f"then {disorder[0][1]})")
    return problems


def hook_owed(record: HookRecord, events: list[LogEvent], cutoff: int) -> list[LogEvent]:
    """The events a webhook subscription is owed: its project's, after its start, up to ``cutoff``, matching its
    patterns, never ``webhook.delivery.updated``."""
    return [event for event in events
            if event.project_id == record.project_id and record.start_seq < event.seq <= cutoff
            and event.type != NEVER_DELIVERED and pattern_matches(record.patterns, event.type)]


def check_hook(record: HookRecord, events: list[LogEvent], cutoff: int) -> list[str]:
    """Invariant 2 for one webhook endpoint: every owed event delivered once, signed, and nothing else."""
    label = f"webhook {record.name} ({', '.join(record.patterns)})"
    by_id = {event.id: event for event in events}
    owed = [event.id for event in hook_owed(record, events, cutoff)]
    problems, _duplicated = _once_each(label, owed, record.received, by_id, cutoff, (
        "owed events were never delivered", "events were delivered more than once",
        "deliveries of events it does not subscribe to"))
    if record.bad_signatures:
        problems.append(f"{label}: {record.bad_signatures} deliveries without a valid signature")
    return problems


def check_statuses(statuses: Counter, failures: Counter, server_5xx: dict | None) -> list[str]:
    """Invariant 1: no 5xx answered (``statuses``: (operation, status) → count, as the client saw them), no
    request left unanswered (``failures``: (operation, error) → count), and no 5xx in the servers' own count
    (``server_5xx``: operation → count from ``/metrics``; None when it could not be read)."""
    problems = []
    bad = {key: count for key, count in statuses.items() if key[1] >= 500}
    if bad:
        problems.append("5xx answers: " + ", ".join(f"{op} {status} × {count}"
                                                    for (op, status), count in sorted(bad.items())))
    if failures:
        problems.append("requests without an answer: " + ", ".join(f"{op} {error} × {count}"
                                                                   for (op, error), count in sorted(failures.items())))
    if server_5xx is None:
        problems.append("the servers' /metrics could not be read: their 5xx count is unknown")
    elif server_5xx:
        problems.append("5xx counted by the servers (cortex_http_requests_total): "
                        + ", ".join(f"{op} × {count:g}" for op, count in sorted(server_5xx.items())))
    return problems


def seated_timeline(gathering_id: str, events: list[LogEvent]) -> tuple[int, int]:
    """Replay a gathering's ``gathering.member.joined``/``.left`` events in log order: (the most members seated
    at once, the members seated at the end)."""
    seated: set[str] = set()
    most = 0
    for event in events:
        if event.resource_id != f"gathering:{gathering_id}" or not event.type.startswith("gathering.member."):
            continue
        data = event.data or {}
        if event.type == "gathering.member.joined":
            seated.add((data.get("member") or {}).get("participantId"))
        elif event.type == "gathering.member.left":
            seated.discard(data.get("participantId"))
        most = max(most, len(seated))
    return most, len(seated)


def check_gatherings(records: list[GatheringRecord], events: list[LogEvent]) -> list[str]:
    """Invariant 3: capacity never exceeded (log replay, join answers), counts consistent, rushes exact."""
    problems = []
    for record in records:
        label = f"gathering {record.id} ({record.kind}, capacity {record.capacity})"
        most, last = seated_timeline(record.id, events)
        if most > record.capacity:
            problems.append(f"{label}: the log seats {most} members at once")
        if record.max_answered > record.capacity:
            problems.append(f"{label}: a join answered memberCount {record.max_answered}")
        if record.final_count is None:
            problems.append(f"{label}: could not be read after the run")
            continue
        if record.final_count > record.capacity:
            problems.append(f"{label}: memberCount {record.final_count} after the run")
        net = record.joins - record.leaves
        if not record.final_count == record.final_seated == last == net:
            problems.append(f"{label}: memberCount {record.final_count}, {record.final_seated} seated members "
                            f"listed, {last} seated by the log, {net} by the client (joins {record.joins} − leaves "
                            f"{record.leaves}) — they must agree")
        if record.kind == "rush" and record.joins != min(record.capacity, record.joiners):
            problems.append(f"{label}: {record.joins} of {record.joiners} simultaneous joins succeeded "
                            f"(exactly {min(record.capacity, record.joiners)} must)")
    return problems


def burst_windows(requests: list[BurstRequest]) -> dict[int, list[BurstRequest]]:
    """The burst's requests that were sent and answered within the same clock second, by that second (the
    server counted them in that one-second window; the others may belong to either)."""
    windows: dict[int, list[BurstRequest]] = defaultdict(list)
    for request in requests:
        if math.floor(request.sent) == math.floor(request.answered):
            windows[math.floor(request.sent)].append(request)
    return windows


def check_rate_limit(requests: list[BurstRequest], limit: int = RATE_LIMIT) -> list[str]:
    """Invariant 4: within any one-second window at most ``limit`` ingests accepted over all processes, every
    other answer 429 with ``Retry-After``; and the burst was conclusive (more than ``limit`` requests, through
    more than one process, in one window)."""
    if not requests:
        return ["rate limit: the burst sent no request"]
    problems = []
    other = Counter(request.status for request in requests if request.status not in (201, 429))
    if other:
        problems.append("rate limit: burst answers other than 201/429: "
                        + ", ".join(f"{status} × {count}" for status, count in sorted(other.items())))
    no_retry = [r for r in requests if r.status == 429 and not (r.retry_after or "").strip().isdigit()]
    if no_retry:
        problems.append(f"rate limit: {len(no_retry)} answers 429 without a Retry-After of whole seconds")
    windows = burst_windows(requests)
    for second, inside in sorted(windows.items()):
        accepted = sum(request.status == 201 for request in inside)
        if accepted > limit:
            by_port = Counter(request.port for request in inside if request.status == 201)
            problems.append(f"rate limit: {accepted} ingests accepted within the second {second} (limit {limit}; "
                            f"by process: {dict(by_port)}) — the limit is not shared")
    touched = {second for request in requests
               for second in range(math.floor(request.sent), math.floor(request.answered) + 1)}
    accepted = sum(request.status == 201 for request in requests)
    if accepted > limit * len(touched):
        problems.append(f"rate limit: {accepted} ingests accepted within {len(touched)} second(s) "
                        f"(at most {limit * len(touched)})")
    conclusive = any(len(inside) > limit and len({request.port for request in inside}) > 1
                     for inside in windows.values())
    if not conclusive:
        biggest = max((len(inside) for inside in windows.values()), default=0)
        problems.append(f"rate limit: inconclusive: at most {biggest} burst requests were answered within one "
                        f"second (more than {limit}, through both processes, are needed)")
    return problems


@dataclass
class Observations:
    """Everything the invariants are checked on."""

    events: list[LogEvent]  # the seeded tenant's log after the earliest position any check starts at
    cutoff: int  # the last seq the checks cover (the log was quiet at the end of the drain)
    statuses: Counter  # (operation, status) → count
    failures: Counter  # (operation, error name) → count
    server_5xx: dict | None  # operation → count, from /metrics
    streams: list[StreamRecord]
    hooks: list[HookRecord]
    gatherings: list[GatheringRecord]
    burst: list[BurstRequest]


def check_invariants(observations: Observations) -> dict[str, list[str]]:
    """Every invariant: its name → its violations (empty when it holds)."""
    o = observations
    return {
        "1. no 5xx": check_statuses(o.statuses, o.failures, o.server_5xx),
        "2. every event once (webhooks, SSE)": [
            *[problem for hook in o.hooks for problem in check_hook(hook, o.events, o.cutoff)],
            *[problem for stream in o.streams for problem in check_stream(stream, o.events, o.cutoff)],
        ],
        "3. gathering capacity": check_gatherings(o.gatherings, o.events),
        "4. ingest rate limit shared": check_rate_limit(o.burst),
    }


# ======================================================================== HTTP: requests, streams, the receiver


class Stats:
    """Every answer by operation: status counts, latencies; requests that got no answer."""

    def __init__(self):
        self.statuses: Counter = Counter()
        self.failures: Counter = Counter()
        self.latencies: dict[str, list[float]] = defaultdict(list)

    def answered(self, op: str, status: int, seconds: float) -> None:
        self.statuses[(op, status)] += 1
        self.latencies[op].append(seconds)

    def failed(self, op: str, error: str) -> None:
        self.failures[(op, error)] += 1

    def table(self) -> list[dict]:
        """One row per operation: count, statuses, p50/p99 in ms."""
        rows = []
        for op in sorted(self.latencies.keys() | {op for op, _ in self.failures}):
            statuses = {status: count for (name, status), count in self.statuses.items() if name == op}
            values = self.latencies.get(op, [])
            rows.append({
                "operation": op, "requests": sum(statuses.values()),
                "statuses": {str(status): count for status, count in sorted(statuses.items())},
                "unanswered": sum(count for (name, _), count in self.failures.items() if name == op),
                "p50_ms": _ms(_loadgen.percentile(values, 50)), "p99_ms": _ms(_loadgen.percentile(values, 99)),
            })
        return rows


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


class HeadConnection(_loadgen.HttpConnection):
    """``_loadgen.HttpConnection`` that keeps the last response's headers (``head``), e.g. for Retry-After."""

    def request(self, raw: bytes) -> tuple[int, bytes, bool]:
        self.head = None
        return super().request(raw)

    def _until(self, separator: bytes) -> bytes:
        out = super()._until(separator)
        if separator == b"\r\n\r\n" and self.head is None:  # the status line and headers come first
            self.head = out
        return out

    def header(self, name: str) -> str | None:
        """A header of the last response (case-insensitive), or None."""
        for line in (self.head or b"").split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None


@dataclass
class Answer:
    """A response: status and body."""

    status: int
    body: bytes

    def json(self):
        return json.loads(self.body)


class Api:
    """Requests to the serving processes over keep-alive connections (one per process), each answer counted in
    ``stats`` under its operation. A greenlet owns its Api (connections are not shared)."""

    def __init__(self, ports: list[int], token: str | None, stats: Stats, rng: random.Random | None = None):
        self.ports = ports
        self.token = token
        self.stats = stats
        self.rng = rng or random.Random()
        self.connections: dict[int, HeadConnection] = {}
        self.used: dict[int, float] = {}  # port → when its connection last had an answer

    def port(self) -> int:
        """One of the serving processes, at random."""
        return self.rng.choice(self.ports)

    def raw(self, op: str, raw: bytes, port: int | None = None) -> Answer | None:
        """Send pre-built request bytes; the answer, or None when none came (counted as a failure)."""
        port = port or self.port()
        if time.monotonic() - self.used.get(port, math.inf) > IDLE_REUSE:
            self._drop(port)
        began = time.perf_counter()
        try:
            connection = self.connections.get(port)
            if connection is None:
                connection = self.connections[port] = HeadConnection(port, REQUEST_TIMEOUT)
            status, body, keep = connection.request(raw)
        except (OSError, ValueError) as exc:
            self.stats.failed(op, type(exc).__name__)
            self._drop(port)
            return None
        self.stats.answered(op, status, time.perf_counter() - began)
        self.used[port] = time.monotonic()
        if not keep:
            self._drop(port)
        return Answer(status, body)

    def call(self, op: str, method: str, path: str, body=None, port: int | None = None) -> Answer | None:
        """One JSON request (bearer token)."""
        return self.raw(op, _loadgen.build_request(path, self.token, method=method, body=body), port)

    def expect(self, op: str, method: str, path: str, status: int, body=None, port: int | None = None):
        """A set-up request that must answer ``status``: its JSON body (SoakError otherwise)."""
        answer = self.call(op, method, path, body, port)
        if answer is None or answer.status != status:
            got = "no answer" if answer is None else f"{answer.status} {answer.body[:300]!r}"
            raise SoakError(f"{op} {method} {path}: expected {status}, got {got}")
        return answer.json() if answer.body else None

    def _drop(self, port: int) -> None:
        connection = self.connections.pop(port, None)
        if connection is not None:
            connection.close()

    def close(self) -> None:
        for port in list(self.connections):
            self._drop(port)


class Dechunker:
    """Decodes an HTTP/1.1 chunked body fed in pieces."""

    def __init__(self):
        self.buffer = bytearray()
        self.left = 0  # bytes of the current chunk still to come
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """The body bytes ``data`` completes."""
        self.buffer += data
        out = bytearray()
        while not self.done:
            if self.left:
                take = min(self.left, len(self.buffer))
                if not take:
                    break
                out += self.buffer[:take]
                del self.buffer[:take]
                self.left -= take
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                break
            line = bytes(self.buffer[:end])
            del self.buffer[:end + 2]
            if not line:  # the CRLF after a chunk's data
                continue
            self.left = int(line.split(b";", 1)[0], 16)
            self.done = self.left == 0
        return bytes(out)


def parse_frames(text: bytes) -> tuple[list[tuple[str | None, str | None]], bytes]:
    """Server-Sent Event frames in ``text``: ([(id, comment) per complete frame], the incomplete rest)."""
    *frames, rest = text.split(b"\n\n")
    parsed = []
    for frame in frames:
        event_id = comment = None
        for line in frame.split(b"\n"):
            if line.startswith(b":"):
                comment = line[1:].strip().decode("utf-8", "replace")
                continue
            name, _, value = line.partition(b":")
            if name == b"id":
                event_id = value[1:].decode() if value.startswith(b" ") else value.decode()
        parsed.append((event_id, comment))
    return parsed, rest


class Subscriber:
    """One SSE subscriber (``GET /api/events/stream``) on one serving process: reconnects with ``Last-Event-ID``
    (its last event, else the marker) whenever a stream ends, as EventSource does, until stopped."""

    def __init__(self, record: StreamRecord, token: str, marker_id: str, stats: Stats):
        self.record = record
        self.token = token
        self.last_id = marker_id
        self.stats = stats
        self.ready = False  # the first stream answered 200 and sent `retry:`
        self.stopping = False
        self.sock = None

    def path(self) -> str:
        query = [f"{name}={quote(value, safe='*,:')}" for name, value in
                 (("types", self.record.types), ("resources", self.record.resources)) if value]
        return "/api/events/stream" + ("?" + "&".join(query) if query else "")

    def run(self) -> None:
        """Read streams until stopped; the pause after a failed connection grows to 1 s."""
        import gevent

        pause = 0.05
        while not self.stopping:
            try:
                self._one_stream()
                pause = 0.05
            except (OSError, ValueError) as exc:
                if self.stopping:
                    return
                self.stats.failed("stream", type(exc).__name__)
                self.record.ends[type(exc).__name__] += 1
                pause = min(1.0, pause * 2)
            gevent.sleep(pause)

    def _one_stream(self) -> None:
        from gevent import socket as gsocket

        raw = (f"GET {self.path()} HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\nUser-Agent: cortex-soak\r\n"
               f"Authorization: Bearer {self.token}\r\nLast-Event-ID: {self.last_id}\r\n\r\n").encode()
        began = time.perf_counter()
        sock = self.sock = gsocket.create_connection((HOST, self.record.port), timeout=SSE_READ_TIMEOUT)
        try:
            sock.sendall(raw)
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionResetError("closed before the headers")
                buffer += data
            head, _, body = buffer.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            self.stats.answered("stream", status, time.perf_counter() - began)
            self.record.connections += 1
            if status != 200:
                self.record.ends[f"HTTP {status}"] += 1
                return
            chunked = b"transfer-encoding: chunked" in head.lower()
            decoder = Dechunker() if chunked else None
            pending = b""
            while True:
                data = decoder.feed(body) if decoder else body
                if data:
                    frames, pending = parse_frames(pending + data)
                    for event_id, comment in frames:
                        if event_id is not None:
                            self.record.received.append(event_id)
                            self.last_id = event_id
                        elif comment and comment.startswith("closed"):
                            self.record.ends[comment[len("closed"):].strip(" ()") or "closed"] += 1
                        self.ready = True  # the first frame is `retry:`
                if decoder and decoder.done:
                    return
                body = sock.recv(65536)
                if not body:
                    self.record.ends["eof"] += 1
                    return
        finally:
            self.sock = None
            sock.close()

    def stop(self) -> None:
        self.stopping = True
        if self.sock is not None:
            self.sock.close()


class Receiver:
    """The webhook endpoints, in this process: one gevent WSGI server per subscription on 127.0.0.1, answering
    204 at once; each delivery's signature is checked and its envelope id recorded."""

    def __init__(self, secrets_by_name: dict[str, str]):
        self.secrets = secrets_by_name
        self.received: dict[str, list[str]] = {name: [] for name in secrets_by_name}
        self.bad_signatures: Counter = Counter()
        self.servers = {}

    def start(self) -> None:
        from gevent.pywsgi import WSGIServer

        for name in self.secrets:
            server = WSGIServer((HOST, 0), lambda environ, start, name=name: self._hook(name, environ, start),
                                log=None)
            server.start()
            self.servers[name] = server

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.servers[name].server_port}/hook/{name}"

    def _hook(self, name: str, environ, start_response):
        import orjson  # (imported once; afterwards a dictionary look-up)

        from cortex.lib.webhook_signing import verify

        body = environ["wsgi.input"].read()
        headers = {key: environ.get(f"HTTP_{key.upper().replace('-', '_')}")
                   for key in ("webhook-id", "webhook-timestamp", "webhook-signature")}
        try:
            verify(self.secrets[name], headers, body)
        except ValueError:
            self.bad_signatures[name] += 1
        try:
            event_id = orjson.loads(body).get("id")
        except (ValueError, AttributeError):
            event_id = None
        self.received[name].append(event_id or f"unreadable:{headers['webhook-id']}")
        start_response("204 No Content", [])
        return [b""]

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop(timeout=1)


# ======================================================================== processes


def cortex_env(args, workdir: str, secret_key: str) -> dict:
    """The environment of every process of this deployment: only what is set here of Cortex's settings."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("CORTEX_") and key not in ("DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")}
    env.update(
        DATABASE_URL=args.database_url,
        REDIS_URL=args.redis_url,
        CORTEX_SECRET_KEY=secret_key,
        CORTEX_DATA_DIR=os.path.join(workdir, "data"),
        PROMETHEUS_MULTIPROC_DIR=os.path.join(workdir, "metrics"),
        CORTEX_WEBHOOK_WORKER="false",  # the worker delivers (docs/realtime-and-webhooks.md, "Running the worker")
        CORTEX_FUNCTIONS_RUNTIME="false",  # no Node.js runtimes
        CORTEX_OUTBOUND_ALLOW_PRIVATE="true",  # the webhook receiver is on loopback: these processes only
        CORTEX_SSE_MAX_SECONDS=str(args.sse_max_seconds),
        # the streams reconnect with the one token of the run: it must outlive the run (default 1 h)
        CORTEX_ACCESS_TOKEN_TTL=str(max(3600, math.ceil(args.duration + args.drain_timeout) + 900)),
        CORTEX_BOT_DRIVER="local",
        CORTEX_LOG_LEVEL="WARNING",
    )
    return env


def cli(env: dict, *argv: str) -> dict:
    """``cortex <argv>`` to completion: its JSON answer."""
    from client_smoke import cortex_command

    try:
        done = subprocess.run(cortex_command() + list(argv), cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise SoakError(f"cortex {' '.join(argv[:2])} did not finish within {START_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise SoakError(f"cortex {' '.join(argv[:2])} exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class Deployment:
    """Two ``cortex serve`` and one ``cortex worker`` (``bench_webhooks.Child``: own session, log file, SIGTERM)."""

    def __init__(self, env: dict, workdir: str):
        self.env = env
        self.workdir = workdir
        self.children: dict[str, object] = {}
        self.ports: list[int] = []

    def start(self) -> None:
        from bench_webhooks import Child
        from client_smoke import cortex_command, free_port

        for name in ("serve-a", "serve-b"):
            port = free_port()
            self.ports.append(port)
            self.children[name] = Child(name, cortex_command() + ["serve", "--host", HOST, "--port", str(port)],
                                        os.path.join(self.workdir, f"{name}.log"), env=self.env)
        self.children["worker"] = Child("worker", cortex_command() + ["worker"],
                                        os.path.join(self.workdir, "worker.log"), env=self.env)

    def wait_ready(self) -> None:
        """Every server answers ``GET /api`` and the worker printed its first line (bounded)."""
        import gevent

        line = self.children["worker"].first_line(START_TIMEOUT)
        if "running" not in line:
            raise SoakError(f"cortex worker said {line!r}")
        deadline = time.monotonic() + START_TIMEOUT
        for name, port in zip(("serve-a", "serve-b"), self.ports, strict=True):
            child = self.children[name]
            while True:
                try:
                    status, _body = _loadgen.fetch(port, _loadgen.build_request("/api"), 2.0)
                    if status == 200:
                        break
                except OSError:
                    pass
                if child.proc.poll() is not None or time.monotonic() > deadline:
                    raise SoakError(f"{name} is not answering on port {port}{child.log_tail()}")
                gevent.sleep(0.1)

    @property
    def pids(self) -> dict[str, int]:
        return {name: child.pid for name, child in self.children.items()}

    def exited(self) -> list[str]:
        """The processes that exited early (names)."""
        return [name for name, child in self.children.items() if child.proc.poll() is not None]

    def log_tails(self, size: int = 3000) -> str:
        return "".join(child.log_tail(size) for child in self.children.values())

    def error_lines(self) -> dict[str, int]:
        """ERROR/CRITICAL lines and tracebacks per process log (a hint, not an invariant)."""
        counts = {}
        for name in self.children:
            try:
                with open(os.path.join(self.workdir, f"{name}.log"), "rb") as handle:
                    text = handle.read()
            except OSError:
                continue
            counts[name] = len(re.findall(rb" (?:ERROR|CRITICAL) |Traceback \(most recent call last\)", text))
        return counts

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to every process at once, then wait for them without blocking this process's event loop (the
        worker finishes its delivery attempts in flight first, and the receiver answering them runs here), at
        most ``timeout`` s; ``Child.stop`` kills what is left."""
        import gevent

        for child in self.children.values():
            if child.proc.poll() is None:
                child.proc.terminate()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(child.proc.poll() is None for child in self.children.values()):
            gevent.sleep(0.05)
        for child in reversed(list(self.children.values())):
            child.stop()
        self.children.clear()


# ======================================================================== the run


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Soak:
    """One soak run: set-up, load, burst, drain, observations."""

    def __init__(self, args, workdir: str):
        self.args = args
        self.workdir = workdir
        self.stats = Stats()
        self.rng = random.Random()
        self.suffix = secrets.token_hex(4)
        self.deployment: Deployment | None = None
        self.receiver: Receiver | None = None
        self.subscribers: list[Subscriber] = []
        self.gatherings: list[GatheringRecord] = []
        self.burst: list[BurstRequest] = []
        self.hooks: list[HookRecord] = []
        self.counts = Counter()  # sessions created/stopped, ingests by type, rushes
        self.actors: list = []  # the load's greenlets
        self.stream_greenlets: list = []
        self.figures: dict = {}
        self.seeded: dict = {}

    # ------------------------------------------------------------------ set-up

    def start(self) -> None:
        """Migrate, seed the user and projects, start the processes, configure everything over the API."""
        import gevent

        key = secrets.token_urlsafe(48)
        env = cortex_env(self.args, self.workdir, key)
        os.makedirs(env["PROMETHEUS_MULTIPROC_DIR"])
        began = time.monotonic()
        cli(env, "db", "upgrade")  # one process migrates (a fresh database too); the others find it done
        email, password = f"soak-{self.suffix}@soak.invalid", secrets.token_urlsafe(18)
        self.deployment = Deployment(env, self.workdir)
        self.deployment.start()  # starts while the CLI seeds
        # --option=value: a random password may start with "-", which argparse would take for an option
        user = cli(env, "admin", "create-user", f"--email={email}", f"--password={password}", "--name=Soak")
        self.seeded = {"email": email, "userId": user["userId"], "tenantId": user["tenantId"]}  # removed later
        jobs = [gevent.get_hub().threadpool.spawn(cli, env, "admin", "create-project", f"--owner={email}",
                                                  f"--name=Soak {kind} {self.suffix}") for kind in ("main", "burst")]
        main, burst = [job.get(timeout=START_TIMEOUT) for job in jobs]
        self.deployment.wait_ready()
        self.ports = self.deployment.ports
        self.figures["startup_s"] = round(time.monotonic() - began, 1)

        api = Api(self.ports, None, self.stats, self.rng)
        login = api.expect("loginWithCredentials", "POST", "/api/auth/login-credentials", 201,
                           {"email": email, "password": password})
        self.token = api.token = login["accessToken"]
        self.main = {"id": main["id"], "secret": main["secret"]}
        self.burst_project = {"id": burst["id"], "secret": burst["secret"]}
        sessions = {}
        for project in (self.main, self.burst_project):
            self._configure(api, project["id"])
            count = self.args.ingest_sessions if project is self.main else 1
            sessions[project["id"]] = [
                api.expect("createSession", "POST", f"/api/projects/{project['id']}/sessions", 201,
                           {"title": f"Soak ingest {n}", "externalRoomId": f"soak-{self.suffix}-ingest-{n}"})["id"]
                for n in range(count)]
        self.ingest_sessions = sessions[self.main["id"]]
        self.burst_project["session"] = sessions[self.burst_project["id"]][0]
        self._seed_gatherings(api)
        self._seed_hooks(api)
        # The marker: a signed ingest after the subscriptions; every stream is owed what comes after it.
        from bench_ingest import signed_request

        from cortex.events.ingest import sign

        project = {**self.main, "session": self.ingest_sessions[0]}
        answer = api.raw("ingest", signed_request(project, "image.created", "created", {"soak": "marker"}, sign,
                                                  now_text()))
        if answer is None or answer.status != 201:
            raise SoakError(f"the marker ingest answered {answer and answer.status}: {answer and answer.body[:200]!r}")
        self.marker = answer.json()["id"]
        api.close()
        self._open_streams()

    def _configure(self, api: Api, project_id: str) -> None:
        """App settings (so sessions start: voice, an access key, the ``access_key`` provider) and the secret
        synced for signed ingest."""
        base = f"/api/projects/{project_id}"
        api.expect("activateVoice", "POST", f"{base}/voice/activate", 201)
        key = api.expect("createAccessKey", "POST", f"{base}/voice/access-keys", 201, {"name": "soak"})
        api.expect("upsertAppSettings", "PUT", f"{base}/settings", 200,
                   {"tokenProviderType": "access_key",
                    "accessKeyConfig": {"accessKey": key["accessKey"], "botUserId": "soak-bot"}})
        api.expect("syncSecret", "POST", f"{base}/settings/sync-secret", 200)

    def _seed_gatherings(self, api: Api) -> None:
        """The player gatherings (capacity 3, more players than seats) and the rush players."""
        base = f"/api/projects/{self.main['id']}"
        self.players: dict[str, list[str]] = {}
        for number in range(self.args.gatherings):
            gathering = api.expect("createGathering", "POST", f"{base}/gatherings", 201,
                                   {"name": f"Soak {number}", "type": "lobby", "maxMembers": CAPACITY})
            self.gatherings.append(GatheringRecord(gathering["id"], gathering["joinCode"], gathering["maxMembers"]))
            self.players[gathering["id"]] = [self._participant(api, f"player-{number}-{seat}")
                                             for seat in range(PLAYERS_PER_GATHERING)]
        self.rush_players = [self._participant(api, f"rusher-{number}") for number in range(RUSH_JOINERS)]

    def _participant(self, api: Api, name: str) -> str:
        return api.expect("createParticipant", "POST", f"/api/projects/{self.main['id']}/participants", 201,
                          {"externalUserId": f"soak-{name}", "displayName": name})["id"]

    def _seed_hooks(self, api: Api) -> None:
        """The receiver and one subscription per endpoint; each subscription's start position from the log."""
        from models.webhooks import WebhookSubscription

        hook_secrets = {name: "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode() for name in HOOKS}
        self.receiver = Receiver(hook_secrets)
        self.receiver.start()
        ids = {}
        for name, patterns in HOOKS.items():
            body = {"url": self.receiver.url(name), "secret": hook_secrets[name], "events": patterns,
                    "description": f"soak {name}"}
            ids[name] = api.expect("createSubscription", "POST",
                                   f"/api/projects/{self.main['id']}/webhooks/subscriptions", 201, body)["id"]
        with self.database():
            starts = dict(WebhookSubscription.select(WebhookSubscription.id, WebhookSubscription.start_seq)
                          .where(WebhookSubscription.id.in_(list(ids.values()))).tuples())
        self.hooks = [HookRecord(name, self.main["id"], HOOKS[name], starts[ids[name]]) for name in HOOKS]

    def _open_streams(self) -> None:
        """``--subscribers`` streams on each process (the filters of STREAM_FILTERS in turn), all resuming after
        the marker; waits until every one answered 200 and sent its first frame."""
        import gevent

        from models.events import DomainEvent

        with self.database():
            after = DomainEvent.get(DomainEvent.id == self.marker).seq
        self.marker_seq = after
        for port in self.ports:
            for number in range(self.args.subscribers):
                name, types, resources = STREAM_FILTERS[number % len(STREAM_FILTERS)]
                resources = resources and resources.format(session=self.ingest_sessions[0])
                record = StreamRecord(f"{name}#{number}", port, types, resources, after)
                self.subscribers.append(Subscriber(record, self.token, self.marker, self.stats))
        self.stream_greenlets = [gevent.spawn(subscriber.run) for subscriber in self.subscribers]
        deadline = time.monotonic() + 30
        while not all(subscriber.ready for subscriber in self.subscribers):
            if time.monotonic() > deadline:
                waiting = [s.record.name for s in self.subscribers if not s.ready]
                raise SoakError(f"SSE subscribers not streaming within 30 s: {waiting}")
            gevent.sleep(0.05)

    # ------------------------------------------------------------------ the mixed load

    def load(self) -> None:
        """Every actor for ``--duration`` seconds, then wait for them to finish what they were doing."""
        import gevent

        deadline = time.monotonic() + self.args.duration
        actors = self.actors = [gevent.spawn(self._sessions, deadline), gevent.spawn(self._reader, deadline),
                                gevent.spawn(self._rushes, deadline)]
        senders = max(2, math.ceil(self.args.ingest_rate / 10))  # each waits for its answers: ~10/s apiece
        actors += [gevent.spawn(self._ingest, deadline, number, senders) for number in range(senders)]
        for record in self.gatherings:
            actors += [gevent.spawn(self._player, deadline, record, player) for player in self.players[record.id]]
        before = _loadgen.cpu_mark(None)
        processes = {name: _loadgen.process_cpu_seconds(pid) for name, pid in self.deployment.pids.items()}
        gevent.joinall(actors, timeout=self.args.duration + REQUEST_TIMEOUT + 10)
        after = _loadgen.cpu_mark(None)
        seconds = after[0] - before[0]
        self.figures["load_s"] = round(seconds, 1)
        self.figures["cpu_percent"] = {
            "soak tool": round((after[2] - before[2]) / seconds * 100),
            **{name: round(((_loadgen.process_cpu_seconds(pid) or 0) - (processes[name] or 0)) / seconds * 100)
               for name, pid in self.deployment.pids.items()}}
        stuck = [actor for actor in actors if not actor.dead]
        gevent.killall(stuck, timeout=5)
        for actor in actors:
            if actor.exception is not None and not isinstance(actor.exception, gevent.GreenletExit):
                raise SoakError(f"a load actor failed: {type(actor.exception).__name__}: {actor.exception}")
        if stuck:
            raise SoakError(f"{len(stuck)} load actors did not finish in time")

    def _sleep_until(self, at: float) -> None:
        import gevent

        gevent.sleep(max(0.0, at - time.monotonic()))

    def _sessions(self, deadline: float) -> None:
        """Create a session every 1/``--session-rate`` s (the local bot driver starts it), stop an older one
        every other time, read one now and then."""
        api = Api(self.ports, self.token, self.stats, random.Random(1))
        base = f"/api/projects/{self.main['id']}/sessions"
        live: list[str] = []
        number = 0
        try:
            while time.monotonic() < deadline:
                tick = time.monotonic() + 1 / self.args.session_rate
                number += 1
                answer = api.call("createSession", "POST", base, {"title": f"Soak session {number}",
                                                                  "externalRoomId": f"soak-{self.suffix}-{number}"})
                if answer is not None and answer.status == 201:
                    live.append(answer.json()["id"])
                    self.counts["sessions created"] += 1
                if number % 2 == 0 and len(live) > 1:
                    session = live.pop(api.rng.randrange(len(live) - 1))
                    answer = api.call("stopSession", "POST", f"{base}/{session}/stop")
                    self.counts["sessions stopped"] += answer is not None and 200 <= answer.status < 300
                if number % 3 == 0 and live:
                    api.call("getSession", "GET", f"{base}/{api.rng.choice(live)}")
                self._sleep_until(tick)
        finally:
            api.close()

    def _ingest(self, deadline: float, number: int, senders: int) -> None:
        """Signed ingest at ``--ingest-rate``/``senders`` events/s: participant.joined/left and message.created
        (70 %) into the ingest sessions, each request signed afresh."""
        from bench_ingest import signed_request

        from cortex.events.ingest import sign

        api = Api(self.ports, None, self.stats, random.Random(10 + number))
        interval = senders / self.args.ingest_rate
        tick = time.monotonic() + number * interval / senders
        sequence = 0
        peers: dict[tuple[str, int], list[int]] = defaultdict(list)  # (session, user) → peers this sender joined
        try:
            while time.monotonic() < deadline:
                self._sleep_until(tick)
                tick = max(tick + interval, time.monotonic())  # late: go on from now, no catch-up burst
                sequence += 1
                session = api.rng.choice(self.ingest_sessions)
                user = api.rng.randrange(USERS_PER_SESSION)
                roll = api.rng.random()
                if roll < 0.2:  # a new peer of the user (unique: its body is never a byte-identical replay)
                    kind, action = "participant.joined", "created"
                    peer = number * 10_000_000 + sequence
                    peers[(session, user)].append(peer)
                    data = {"sessionId": session, "userId": f"soak-user-{user}", "displayName": f"User {user}",
                            "peerId": peer}
                elif roll < 0.3:  # one of its peers leaves (a peer never joined, when it has none)
                    kind, action = "participant.left", "deleted"
                    joined_peers = peers[(session, user)]
                    peer = joined_peers.pop(0) if joined_peers else number * 10_000_000 + sequence
                    data = {"sessionId": session, "userId": f"soak-user-{user}", "peerId": peer}
                else:
                    kind, action = "message.created", "created"
                    data = {"sessionId": session, "userId": f"soak-user-{user}", "senderName": f"User {user}",
                            "content": f"soak line {number}-{sequence}", "id": f"soak-{number}-{sequence}"}
                project = {**self.main, "session": session}
                answer = api.raw("ingest", signed_request(project, kind, action, data, sign, now_text()))
                self.counts[f"ingest {kind}"] += answer is not None and answer.status == 201
        finally:
            api.close()

    def _player(self, deadline: float, record: GatheringRecord, participant: str) -> None:
        """Join by code (either process); once seated hold the seat a moment and leave (either process); when
        the gathering is full try again shortly."""
        api = Api(self.ports, self.token, self.stats, random.Random(participant))
        base = f"/api/projects/{self.main['id']}/gatherings"
        try:
            while time.monotonic() < deadline:
                answer = api.call("joinByCode", "POST", f"{base}/join",
                                  {"joinCode": record.code, "participantId": participant})
                if answer is not None and answer.status == 200:
                    record.joins += 1
                    record.max_answered = max(record.max_answered, answer.json()["gathering"]["memberCount"])
                    self._sleep_until(time.monotonic() + api.rng.uniform(0.2, 1.0))
                    self._leave(api, record, participant)
                    self._sleep_until(time.monotonic() + api.rng.uniform(0.05, 0.3))
                else:
                    record.full += answer is not None and answer.status == 409
                    self._sleep_until(time.monotonic() + api.rng.uniform(0.1, 0.4))
        finally:
            api.close()

    def _leave(self, api: Api, record: GatheringRecord, participant: str) -> None:
        path = f"/api/projects/{self.main['id']}/gatherings/{record.id}/members/{participant}"
        answer = api.call("removeMember", "DELETE", path)
        record.leaves += answer is not None and answer.status == 204

    def _rushes(self, deadline: float) -> None:
        """Every RUSH_INTERVAL s: a new gathering of 3, RUSH_JOINERS players join at the same moment over
        connections opened beforehand (alternating processes), then the seated ones leave at once."""
        import gevent
        from gevent.event import Event

        api = Api(self.ports, self.token, self.stats, random.Random(2))
        base = f"/api/projects/{self.main['id']}/gatherings"
        try:
            while time.monotonic() + RUSH_INTERVAL < deadline:
                self._sleep_until(time.monotonic() + RUSH_INTERVAL / 2)
                answer = api.call("createGathering", "POST", base, {"name": f"Soak rush {self.counts['rushes']}",
                                                                     "type": "lobby", "maxMembers": CAPACITY})
                if answer is None or answer.status != 201:  # counted (a 5xx fails invariant 1); next rush
                    continue
                gathering = answer.json()
                record = GatheringRecord(gathering["id"], gathering["joinCode"], CAPACITY, kind="rush",
                                         joiners=RUSH_JOINERS)
                self.gatherings.append(record)
                self.counts["rushes"] += 1
                joiners = []
                for index, participant in enumerate(self.rush_players):
                    joiner = Api([self.ports[index % 2]], self.token, self.stats)
                    joiner.connections[joiner.ports[0]] = HeadConnection(joiner.ports[0], REQUEST_TIMEOUT)
                    joiners.append((joiner, participant))
                go = Event()

                def join(joiner: Api, participant: str, record=record, go=go) -> bool:
                    go.wait()
                    answer = joiner.call("joinByCode", "POST", f"{base}/join",
                                         {"joinCode": record.code, "participantId": participant})
                    if answer is not None and answer.status == 200:
                        record.joins += 1
                        record.max_answered = max(record.max_answered, answer.json()["gathering"]["memberCount"])
                        return True
                    record.full += answer is not None and answer.status == 409
                    return False

                greenlets = [gevent.spawn(join, joiner, participant) for joiner, participant in joiners]
                gevent.sleep(0.05)
                go.set()
                gevent.joinall(greenlets, timeout=2 * REQUEST_TIMEOUT)
                # every join answered: the seated ones leave together (both processes)
                seated = [(joiner, participant) for greenlet, (joiner, participant) in zip(greenlets, joiners, strict=True)
                          if greenlet.value]
                gevent.joinall([gevent.spawn(self._leave, joiner, record, participant) for joiner, participant in seated],
                               timeout=2 * REQUEST_TIMEOUT)
                for joiner, _participant in joiners:
                    joiner.close()
                self._sleep_until(time.monotonic() + RUSH_INTERVAL / 2)
        finally:
            api.close()

    def _reader(self, deadline: float) -> None:
        """Reads at ~4/s: sessions, gatherings, a gathering, participants."""
        api = Api(self.ports, self.token, self.stats, random.Random(3))
        base = f"/api/projects/{self.main['id']}"
        reads = [("listSessions", "/sessions"), ("listGatherings", "/gatherings"),
                 ("listParticipants", "/participants?limit=50")]
        try:
            while time.monotonic() < deadline:
                tick = time.monotonic() + 0.25
                op, path = api.rng.choice(reads)
                if api.rng.random() < 0.3:
                    op, path = "getGathering", f"/gatherings/{api.rng.choice(self.gatherings).id}"
                api.call(op, "GET", base + path)
                self._sleep_until(tick)
        finally:
            api.close()

    # ------------------------------------------------------------------ the rate-limit burst

    def rate_burst(self) -> None:
        """BURST signed ingests for the burst project over BURST_CONNECTIONS connections (half to each process,
        opened beforehand), fired at the start of a clock second; repeated (at most BURST_ATTEMPTS times) until
        more than the limit were answered within one second."""
        import gevent
        from bench_ingest import signed_request
        from gevent.event import Event

        from cortex.events.ingest import sign

        for attempt in range(BURST_ATTEMPTS):
            timestamp = now_text()
            raws = [signed_request(self.burst_project, "message.created", "created",
                                   {"sessionId": self.burst_project["session"], "userId": f"burst-{n % 10}",
                                    "senderName": "Burst", "content": f"burst {attempt}-{n}",
                                    "id": f"burst-{attempt}-{n}"}, sign, timestamp) for n in range(BURST)]
            connections = [HeadConnection(self.ports[n % 2], REQUEST_TIMEOUT) for n in range(BURST_CONNECTIONS)]
            go = Event()
            outcome: list[BurstRequest] = []

            def fire(index: int, connection: HeadConnection, go=go, raws=raws, outcome=outcome) -> None:
                port = self.ports[index % 2]
                go.wait()
                for raw in raws[index::BURST_CONNECTIONS]:
                    sent = time.time()
                    began = time.perf_counter()
                    try:
                        status, _body, _keep = connection.request(raw)
                    except (OSError, ValueError) as exc:
                        self.stats.failed("ingest (burst)", type(exc).__name__)
                        return
                    self.stats.answered("ingest (burst)", status, time.perf_counter() - began)
                    outcome.append(BurstRequest(port, sent, time.time(), status, connection.header("Retry-After")))

            greenlets = [gevent.spawn(fire, index, connection) for index, connection in enumerate(connections)]
            wait = 1.0 - (time.time() % 1.0) + 0.01  # the start of the next second
            gevent.sleep(wait if wait > 0.2 else wait + 1.0)  # (the connections are open by then)
            go.set()
            gevent.joinall(greenlets, timeout=2 * REQUEST_TIMEOUT)
            for connection in connections:
                connection.close()
            self.burst += outcome
            windows = burst_windows(outcome)
            if any(len(inside) > RATE_LIMIT and len({r.port for r in inside}) > 1 for inside in windows.values()):
                break
            gevent.sleep(1.1)  # a fresh window for the next attempt
        self.figures["burst_attempts"] = attempt + 1

    # ------------------------------------------------------------------ drain and read back

    def drain(self) -> tuple[list[LogEvent], int]:
        """Wait (at most ``--drain-timeout`` s) until the worker has fanned out and delivered everything and the log
        is quiet, then until every stream and endpoint has what it is owed; (the tenant's log, the cutoff)."""
        import gevent

        from models.events import EventCursor
        from models.webhooks import WebhookEvent

        began = time.monotonic()
        deadline = began + self.args.drain_timeout
        hook_ids = [row[0] for row in self._subscription_ids()]
        quiet_since, last_newest = None, None
        while True:
            with self.database():
                newest = self._newest_seq()
                cursor = EventCursor.select(EventCursor.seq).where(EventCursor.consumer == "webhooks").scalar() or 0
                pending = (WebhookEvent.select().where(WebhookEvent.subscription_id.in_(hook_ids)
                                                       & (WebhookEvent.status == "pending")).count())
            settled = pending == 0 and cursor >= newest
            if settled and newest == last_newest:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= 1.0:
                    break
            else:
                quiet_since = None
            last_newest = newest
            if time.monotonic() > deadline:
                self.figures["drain_note"] = (f"the log was not quiet within {self.args.drain_timeout:g} s "
                                              f"(pending deliveries {pending}, fan-out cursor {cursor} of {newest})")
                break
            gevent.sleep(0.25)
        events = self._read_log()
        cutoff = max((event.seq for event in events), default=self.marker_seq)
        owed_streams = {id(s): {e.id for e in stream_owed(s.record, events, cutoff)} for s in self.subscribers}
        owed_hooks = {hook.name: {e.id for e in hook_owed(hook, events, cutoff)} for hook in self.hooks}
        while time.monotonic() < deadline:
            streams_done = all(owed_streams[id(s)] <= set(s.record.received) for s in self.subscribers)
            hooks_done = all(owed_hooks[name] <= set(self.receiver.received[name]) for name in owed_hooks)
            if streams_done and hooks_done:
                break
            gevent.sleep(0.1)
        gevent.sleep(0.5)  # a duplicate arriving late is caught too
        self.figures["drain_s"] = round(time.monotonic() - began, 1)
        return events, cutoff

    def _subscription_ids(self) -> list[tuple]:
        from models.webhooks import WebhookSubscription

        with self.database():
            return list(WebhookSubscription.select(WebhookSubscription.id)
                        .where(WebhookSubscription.project_id == self.main["id"]).tuples())

    def _newest_seq(self) -> int:
        from peewee import fn

        from models.events import DomainEvent

        return (DomainEvent.select(fn.MAX(DomainEvent.seq))
                .where(DomainEvent.tenant_id == self.seeded["tenantId"]).scalar() or 0)

    def _read_log(self) -> list[LogEvent]:
        """The seeded tenant's events after the earliest position a check starts at, in log order."""
        from models.events import DomainEvent

        start = min([self.marker_seq, *(hook.start_seq for hook in self.hooks)])
        with self.database():
            rows = (DomainEvent.select(DomainEvent.seq, DomainEvent.id, DomainEvent.project_id, DomainEvent.type,
                                       DomainEvent.resource_id)
                    .where((DomainEvent.tenant_id == self.seeded["tenantId"]) & (DomainEvent.seq > start))
                    .order_by(DomainEvent.seq).tuples())
            events = [LogEvent(*row) for row in rows]
            members = dict(DomainEvent.select(DomainEvent.seq, DomainEvent.payload)
                           .where((DomainEvent.tenant_id == self.seeded["tenantId"]) & (DomainEvent.seq > start)
                                  & DomainEvent.type.startswith("gathering.member.")).tuples())
        return [LogEvent(e.seq, e.id, e.project_id, e.type, e.resource_id, (members[e.seq] or {}).get("data"))
                if e.seq in members else e for e in events]

    def read_back(self) -> dict | None:
        """Each gathering's final memberCount and seated members (API), the webhook log's failed/pending entries
        (API), and the servers' 5xx counts from /metrics (None when unreadable)."""
        api = Api(self.ports, self.token, self.stats, self.rng)
        base = f"/api/projects/{self.main['id']}"
        try:
            for record in self.gatherings:
                gathering = api.call("getGathering", "GET", f"{base}/gatherings/{record.id}")
                members = api.call("listMembers", "GET", f"{base}/gatherings/{record.id}/members")
                if gathering is not None and gathering.status == 200 and members is not None \
                        and members.status == 200:
                    record.final_count = gathering.json()["memberCount"]
                    record.final_seated = sum(m["status"] in ("joined", "ready") for m in members.json())
            log_view = {}
            for status in ("pending", "failed"):
                answer = api.call("listEvents", "GET", f"{base}/webhooks/events?status={status}&limit=500")
                log_view[status] = len(answer.json()) if answer is not None and answer.status == 200 else None
            self.figures["webhook_log_api"] = log_view
            metrics = api.raw("getMetrics", _loadgen.build_request("/metrics", accept="text/plain"))
        finally:
            api.close()
        if metrics is None or metrics.status != 200:
            return None
        return server_metrics(metrics.body.decode("utf-8", "replace"), self.figures)

    def stop_streams(self) -> None:
        import gevent

        for subscriber in self.subscribers:
            subscriber.stop()
        gevent.killall(self.stream_greenlets, timeout=5)

    def observations(self, events: list[LogEvent], cutoff: int, server_5xx: dict | None) -> Observations:
        for hook in self.hooks:
            hook.received = list(self.receiver.received[hook.name])
            hook.bad_signatures = self.receiver.bad_signatures[hook.name]
        return Observations(events, cutoff, self.stats.statuses, self.stats.failures, server_5xx,
                            [subscriber.record for subscriber in self.subscribers], self.hooks, self.gatherings,
                            self.burst)

    def remove_seeded(self) -> None:
        """Delete the seeded tenant (its projects cascade), best effort."""
        from types import SimpleNamespace

        from bench_gatherings import remove_gatherings

        from models.webhooks import WebhookDelivery, WebhookEvent, WebhookSubscription

        def webhook_rows(user):  # rows the cascades from projects miss
            remove_gatherings(user)
            ours = (WebhookSubscription.select(WebhookSubscription.id)
                    .where(WebhookSubscription.tenant_id == user.tenant_id))
            WebhookDelivery.delete().where(WebhookDelivery.subscription_id.in_(ours)).execute()
            WebhookEvent.delete().where(WebhookEvent.tenant_id == user.tenant_id).execute()
            WebhookSubscription.delete().where(WebhookSubscription.tenant_id == user.tenant_id).execute()

        user = SimpleNamespace(id=self.seeded["userId"], tenant_id=self.seeded["tenantId"])
        with self.database():  # (bound)
            _loadgen.remove_tenant(user, webhook_rows)

    def database(self):
        """A connection context of this process's models, bound to ``--database-url`` on first use (the checks
        read the log through the models: one definition of the schema)."""
        from models.base import db
        from models.database import init_database

        if db.obj is None:
            init_database(self.args.database_url, pool_size=2)
        return db.connection_context()

    def close(self) -> None:
        """Stop everything this run started (idempotent): the load first (interrupted), then the streams, the
        processes and the receiver."""
        import gevent

        gevent.killall(self.actors, timeout=5)
        self.stop_streams()
        if self.deployment is not None:
            self.deployment.stop()
        if self.receiver is not None:
            self.receiver.stop()


def server_metrics(text: str, figures: dict) -> dict:
    """From ``/metrics`` (Prometheus text): operation → 5xx count of ``cortex_http_requests_total``; the webhook
    delivery outcomes go into ``figures``."""
    fivexx: dict[str, float] = {}
    outcomes: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("cortex_http_requests_total{"):
            labels, _, value = line.rpartition(" ")
            status = re.search(r'status="(\d+)"', labels)
            if status and status.group(1).startswith("5") and float(value):
                op = re.search(r'operation="([^"]*)"', labels)
                name = op.group(1) if op else "?"
                fivexx[name] = fivexx.get(name, 0) + float(value)
        elif line.startswith("cortex_webhook_deliveries_total{"):
            labels, _, value = line.rpartition(" ")
            outcome = re.search(r'outcome="([^"]*)"', labels)
            if outcome:
                outcomes[outcome.group(1)] = outcomes.get(outcome.group(1), 0) + float(value)
    figures["webhook_attempts_by_outcome"] = outcomes
    return fivexx


# ======================================================================== report


def summary(soak: Soak, observations: Observations, verdicts: dict[str, list[str]], wall: float) -> dict:
    """Print the human summary; the figures as a dict (``--json``)."""
    o = observations
    rows = soak.stats.table()
    print(f"\nrequests by operation ({sum(r['requests'] for r in rows)} answered)")
    print(f"  {'operation':<22} {'count':>7}  {'p50 ms':>8} {'p99 ms':>8}  statuses")
    for row in rows:
        statuses = ", ".join(f"{status} × {count}" for status, count in row["statuses"].items())
        unanswered = f", unanswered × {row['unanswered']}" if row["unanswered"] else ""
        print(f"  {row['operation']:<22} {row['requests']:>7}  {row['p50_ms'] or '-':>8} {row['p99_ms'] or '-':>8}  "
              f"{statuses}{unanswered}")
    window = [event for event in o.events if soak.marker_seq < event.seq <= o.cutoff]
    by_type = Counter(event.type for event in window)
    print(f"\nevents logged after the marker: {len(window)} ("
          + ", ".join(f"{kind} {count}" for kind, count in by_type.most_common(8)) + ")")
    deliveries = {}
    for hook in o.hooks:
        owed = len(hook_owed(hook, o.events, o.cutoff))
        deliveries[hook.name] = {"owed": owed, "received": len(hook.received), "unique": len(set(hook.received)),
                                 "bad_signatures": hook.bad_signatures}
        print(f"webhook {hook.name:<10} ({', '.join(hook.patterns)}): owed {owed}, received {len(hook.received)} "
              f"({len(set(hook.received))} distinct), bad signatures {hook.bad_signatures}")
    attempts = soak.figures.get("webhook_attempts_by_outcome")
    if attempts is not None:
        print(f"webhook attempts by outcome (/metrics, all processes): {attempts}; the API's webhook log lists "
              f"{soak.figures.get('webhook_log_api')}")
    streams = []
    for record in o.streams:
        owed = len(stream_owed(record, o.events, o.cutoff))
        streams.append({"name": record.name, "port": record.port, "owed": owed, "received": len(record.received),
                        "connections": record.connections, "ends": dict(record.ends)})
    print(f"SSE subscribers ({len(streams)}; streams end after {soak.args.sse_max_seconds} s and resume):")
    for row in streams:
        print(f"  {row['name']:<14} port {row['port']}: owed {row['owed']}, received {row['received']}, "
              f"{row['connections']} connections, ends {row['ends']}")
    gatherings = [asdict(record) for record in o.gatherings]
    players = [g for g in o.gatherings if g.kind == "players"]
    rushes = [g for g in o.gatherings if g.kind == "rush"]
    print(f"gatherings: {len(players)} with players (joins {sum(g.joins for g in players)}, full "
          f"{sum(g.full for g in players)}, leaves {sum(g.leaves for g in players)}); {len(rushes)} rushes of "
          f"{RUSH_JOINERS} joiners (joins {sum(g.joins for g in rushes)}, full {sum(g.full for g in rushes)}); "
          f"most seated at once by the log: {max((seated_timeline(g.id, o.events)[0] for g in o.gatherings), default=0)}"
          f" (capacity {CAPACITY})")
    windows = burst_windows(o.burst)
    burst_rows = [{"second": second, "requests": len(inside), "accepted": sum(r.status == 201 for r in inside),
                   "limited": sum(r.status == 429 for r in inside),
                   "by_port": dict(Counter(r.port for r in inside))} for second, inside in sorted(windows.items())]
    print(f"rate-limit burst ({soak.figures.get('burst_attempts')} attempt(s), {len(o.burst)} requests: "
          f"{sum(r.status == 201 for r in o.burst)} accepted, {sum(r.status == 429 for r in o.burst)} × 429); "
          f"within one second: " + "; ".join(f"{row['requests']} sent → {row['accepted']} accepted "
                                              f"({row['by_port']})" for row in burst_rows))
    print(f"cpu during the load (% of one core): {soak.figures.get('cpu_percent')}")
    print(f"wall time {wall:.1f} s (start-up {soak.figures.get('startup_s')} s, load {soak.figures.get('load_s')} s, "
          f"drain {soak.figures.get('drain_s')} s)" + (f"; {soak.figures['drain_note']}"
                                                        if soak.figures.get("drain_note") else ""))
    errors = soak.deployment.error_lines() if soak.deployment else {}
    if any(errors.values()):
        print(f"note: ERROR lines / tracebacks in the process logs: {errors}")
    print()
    for name, problems in verdicts.items():
        print(f"{'PASS' if not problems else 'FAIL'}  {name}")
        for problem in problems:
            print(f"      - {problem}")
    return {
        "wall_s": round(wall, 1), "duration_s": soak.args.duration, **soak.figures, "counts": dict(soak.counts),
        "requests": rows, "events": {"total": len(window), "by_type": dict(by_type)}, "webhooks": deliveries,
        "streams": streams, "gatherings": gatherings, "burst_windows": burst_rows, "log_error_lines": errors,
        "invariants": {name: problems for name, problems in verdicts.items()},
        "passed": not any(verdicts.values()),
    }


# ======================================================================== command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Soak two cortex serve processes and a cortex worker on PostgreSQL + Redis, then check the "
                    "invariants (no 5xx, every event once, gathering capacity, shared ingest rate limit).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                        help="postgresql://… (default: $DATABASE_URL)")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"), help="redis://… (default: $REDIS_URL)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of mixed load")
    parser.add_argument("--ingest-rate", type=float, default=40.0, help="signed ingests per second in the load")
    parser.add_argument("--session-rate", type=float, default=1.0, help="sessions created per second")
    parser.add_argument("--gatherings", type=int, default=3,
                        help=f"gatherings of {CAPACITY} seats, {PLAYERS_PER_GATHERING} players each")
    parser.add_argument("--ingest-sessions", type=int, default=3, help="sessions the ingest load writes into")
    parser.add_argument("--subscribers", type=int, default=4, help="SSE subscribers on EACH serving process")
    parser.add_argument("--sse-max-seconds", type=int, default=20,
                        help="CORTEX_SSE_MAX_SECONDS: streams end (and resume with Last-Event-ID) this often")
    parser.add_argument("--drain-timeout", type=float, default=60.0,
                        help="seconds at most to wait for deliveries and streams to catch up after the load")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and the seeded data")
    return parser


def invalid_options(args) -> str | None:
    """Why the options cannot run a soak, or None."""
    database = urlparse(args.database_url or "")
    if database.scheme not in ("postgres", "postgresql"):
        return ("needs PostgreSQL: pass --database-url postgresql://… or set DATABASE_URL (the soak is about "
                "several processes on PostgreSQL + Redis)")
    if urlparse(args.redis_url or "").scheme not in ("redis", "rediss", "unix"):
        return "needs Redis: pass --redis-url redis://… or set REDIS_URL (the processes share it)"
    if args.duration <= 0 or args.ingest_rate <= 0 or args.session_rate <= 0 or args.drain_timeout <= 0:
        return "--duration, --ingest-rate, --session-rate and --drain-timeout must be > 0"
    if args.ingest_rate >= RATE_LIMIT:
        return f"--ingest-rate must stay below the per-project limit ({RATE_LIMIT}/s)"
    if args.gatherings < 1 or args.subscribers < 1 or args.ingest_sessions < 1 or args.sse_max_seconds < 1:
        return "--gatherings, --subscribers, --ingest-sessions and --sse-max-seconds must be >= 1"
    return None


def run(args) -> int:
    """The soak; the exit status."""
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="cortex-soak-")
    soak = Soak(args, workdir)
    passed = interrupted = False
    try:
        print(f"soak: 2 × cortex serve + cortex worker on {_loadgen.describe_database(args.database_url)}, redis "
              f"{urlparse(args.redis_url).netloc}{urlparse(args.redis_url).path}; {args.duration:g} s of mixed load; "
              f"logs in {workdir}", flush=True)
        soak.start()
        print(f"soak: up after {soak.figures['startup_s']} s (ports {soak.ports}); tenant {soak.seeded['tenantId']}, "
              f"{len(soak.subscribers)} streams open; load for {args.duration:g} s", flush=True)
        soak.load()
        soak.rate_burst()
        events, cutoff = soak.drain()
        server_5xx = soak.read_back()
        soak.stop_streams()
        exited = soak.deployment.exited()
        observations = soak.observations(events, cutoff, server_5xx)
        verdicts = check_invariants(observations)
        if exited:
            verdicts["1. no 5xx"].append(f"processes exited during the run: {', '.join(exited)}")
        report = summary(soak, observations, verdicts, time.monotonic() - started)
        passed = report["passed"]
        if not passed:
            print(soak.deployment.log_tails(), file=sys.stderr)
        if args.json:
            print(json.dumps(report, indent=2, default=str))
        print(f"\nsoak {'PASSED' if passed else 'FAILED'} in {time.monotonic() - started:.1f} s", flush=True)
        return 0 if passed else 1
    except SoakError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        if soak.deployment is not None:
            print(soak.deployment.log_tails(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        interrupted = True
        print("soak: interrupted; processes stopped", file=sys.stderr)
        return 130
    finally:
        soak.close()
        if soak.seeded and (passed or interrupted) and not args.keep:
            soak.remove_seeded()
        elif soak.seeded:
            print(f"soak: the seeded tenant {soak.seeded['tenantId']} ({soak.seeded['email']}) stays in the "
                  "database", file=sys.stderr)
        if args.keep:
            print(f"soak: logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None) -> int:
    """Parse the options, refuse without PostgreSQL + Redis (exit 2), run."""
    args = build_parser().parse_args(argv)
    problem = invalid_options(args)
    if problem:
        print(f"soak: {problem}", file=sys.stderr)
        return 2
    from bench_http import raise_fd_limit

    raise_fd_limit()
    _loadgen.interrupt_on_sigterm()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
