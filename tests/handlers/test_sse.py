"""The SSE streams (GET /api/events/stream, GET /api/projects/{projectId}/events/stream), cortex/events/sse.py.

Most tests run twice: ``push`` (the live pipeline of ``cortex serve``: dispatcher → LiveFanout → subscription)
and ``poll`` (an app without a fan-out: each stream reads the log). Streams are read through the Flask test
client (``buffered=False``); every read is bounded by the stream's own maximum duration, so a missing event
fails the test after a few seconds instead of hanging it. Absence is proven by ordering where possible: a
later event of the caller's arrives, so an earlier foreign one would have arrived before it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace

import orjson
import pytest
from flask.testing import FlaskClient
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request, Response

from cortex.events import sse
from cortex.events.fanout import LiveFanout, start_event_pipeline
from cortex.settings import Settings
from models.base import db, new_id, transaction
from models.events import DomainEvent, emit
from models.identity import ProjectMember, create_project
from tests.conftest import openapi

STREAM = "/api/events/stream"
MAX_SECONDS = 8.0  # bounds every blocking read of a test stream


# ----------------------------------------------------------------- reading a stream


@dataclass
class Frame:
    """One SSE frame: its fields (data lines joined with "\\n", as a browser does) and comments."""

    fields: dict = field(default_factory=dict)
    comments: list = field(default_factory=list)

    @property
    def is_event(self) -> bool:
        return "data" in self.fields

    @property
    def envelope(self) -> dict:
        return json.loads(self.fields["data"])


def parse_frame(raw: str) -> Frame:
    """Parse one frame as the SSE specification does (lines end at LF only in our output)."""
    frame = Frame()
    for line in raw.split("\n"):
        if line.startswith(":"):
            frame.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data" and "data" in frame.fields:
            frame.fields["data"] += "\n" + value
        else:
            frame.fields[name] = value
    return frame


class Reader:
    """A streaming test-client response read frame by frame."""

    def __init__(self, response):
        self.response = response
        self.chunks = iter(response.response)
        self.buffer = ""
        self.frames: deque[Frame] = deque()
        self.ended = False

    def _more(self) -> bool:
        try:
            chunk = next(self.chunks)
        except StopIteration:
            self.ended = True
            return False
        self.buffer += chunk.decode()
        while "\n\n" in self.buffer:
            raw, self.buffer = self.buffer.split("\n\n", 1)
            self.frames.append(parse_frame(raw))
        return True

    def frame(self) -> Frame | None:
        """The next frame; None once the stream ended."""
        while not self.frames:
            if not self._more():
                return None
        return self.frames.popleft()

    def events(self, count: int) -> list[Frame]:
        """The next ``count`` event frames (comments skipped); fails if the stream ends first."""
        events = []
        while len(events) < count:
            frame = self.frame()
            assert frame is not None, f"stream ended after {len(events)} of {count} events: {events}"
            if frame.is_event:
                events.append(frame)
        return events

    def rest(self) -> list[Frame]:
        """Every frame until the stream ends."""
        frames = []
        while (frame := self.frame()) is not None:
            frames.append(frame)
        return frames

    def close(self) -> None:
        self.response.close()


def open_stream(app, url: str = STREAM, headers=None, **kwargs) -> Reader:
    """GET a stream and read its first frame (the retry advice, sent once live delivery has started)."""
    response = FlaskClient(app).get(url, headers=headers or {}, buffered=False, **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    reader = Reader(response)
    first = reader.frame()
    assert first is not None and first.fields == {"retry": "3000"}, first
    return reader


def assert_envelope(item: dict) -> None:
    """The data validates against the document's union of event envelopes (the getEventSchema answer)."""
    environ = EnvironBuilder(method="GET", path="/api/events/schema", base_url="http://localhost/").get_environ()
    wire = Response(orjson.dumps(item), status=200, mimetype="application/json")
    result = openapi().unmarshal_response(WerkzeugOpenAPIRequest(Request(environ)), WerkzeugOpenAPIResponse(wire))
    assert not result.errors, [str(error) for error in result.errors]


def ids(frames) -> list[str]:
    return [frame.fields["id"] for frame in frames]


# ----------------------------------------------------------------- fixtures and helpers


#: Stream lifetime for tests whose events were all committed before the stream opened: the replay from
#: Last-Event-ID sends (or filters) them at once, so the stream only has to outlive its first read of the log.
REPLAY_SECONDS = 0.15


def set_max_seconds(app, seconds: float) -> None:
    runtime = app.extensions["cortex"]
    runtime.settings = replace(runtime.settings, sse_max_seconds=seconds)


@pytest.fixture(params=["push", "poll"])
def mode(request, app, settings):
    """``push``: the live pipeline `cortex serve` starts; ``poll``: no fan-out, streams read the log."""
    set_max_seconds(app, MAX_SECONDS)
    runtime = app.extensions["cortex"]
    if request.param == "poll":
        yield "poll"
        return
    dispatcher, fanout = start_event_pipeline(settings, poll_interval=0.05)
    runtime.fanout = fanout
    try:
        yield "push"
    finally:
        runtime.fanout = None
        dispatcher.stop()
        fanout.stop()


@pytest.fixture
def bounded(app):
    """Streams end after MAX_SECONDS, without a fan-out (poll)."""
    set_max_seconds(app, MAX_SECONDS)


def participant(client, member, external_id: str, project=None) -> dict:
    """Create a participant through the API (one participant.created event)."""
    project = project or member.project
    response = client.post(
        f"/api/projects/{project.id}/participants", json={"externalUserId": external_id}, headers=member.headers
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def event(event_type: str, tenant_id: str, project_id: str | None, resource_id: str | None = None) -> DomainEvent:
    """Commit one event directly (any type; its own transaction, as a domain operation would)."""
    with transaction():
        return emit(
            event_type,
            tenant_id=tenant_id,
            project_id=project_id,
            resource_id=resource_id or f"thing:{new_id()}",
            action=event_type.rsplit(".", 1)[-1],
            data={"id": new_id()},
        )


def last_event() -> DomainEvent:
    """The newest event in the log."""
    return DomainEvent.select().order_by(DomainEvent.seq.desc()).first()


# ----------------------------------------------------------------- the wire


def test_events_arrive_with_id_event_and_envelope_data(mode, app, client, owner):
    reader = open_stream(app, headers=owner.headers)
    assert reader.response.mimetype == "text/event-stream"
    assert reader.response.headers["Cache-Control"] == "no-cache"
    assert reader.response.headers["X-Accel-Buffering"] == "no"
    created = participant(client, owner, "player-1")
    path = f"/api/projects/{owner.project.id}/participants/{created['id']}"
    assert client.patch(path, json={"displayName": "Player One"}, headers=owner.headers).status_code == 200
    assert client.delete(path, headers=owner.headers).status_code == 204

    frames = reader.events(3)
    reader.close()
    assert [f.fields["event"] for f in frames] == ["participant.created", "participant.updated", "participant.deleted"]
    logged = list(DomainEvent.select().order_by(DomainEvent.seq))
    assert ids(frames) == [e.id for e in logged]
    for frame, row in zip(frames, logged, strict=True):
        item = frame.envelope
        assert_envelope(item)
        assert item["id"] == frame.fields["id"] and item["type"] == frame.fields["event"] == row.type
        assert item["resourceId"] == f"participant:{created['id']}" and item["projectId"] == owner.project.id
    assert frames[1].envelope["payload"]["changes"] == {"displayName": "player-1"}


def test_line_separators_inside_strings_keep_the_data_valid_json(bounded, app, client, owner):
    reader = open_stream(app, headers=owner.headers)
    name = "line\u2028para\u2029next\x85end\r\nand more"
    created = participant(client, owner, name)
    [frame] = reader.events(1)
    reader.close()
    assert frame.envelope["payload"]["data"]["externalUserId"] == name == created["externalUserId"]


def test_frames_cannot_be_split_by_a_type_or_id_with_line_breaks():
    frame = sse.render_event({"id": "a\nid: forged", "type": "x\r\nevent: forged", "payload": {}})
    parsed = parse_frame(frame.decode().rstrip("\n"))
    assert parsed.fields["id"] == "aid: forged" and parsed.fields["event"] == "xevent: forged"


# ----------------------------------------------------------------- filters


KINDS = ["gathering.created", "session.created", "gathering.member.joined", "participant.deleted"]
TYPE_CASES = {  # types → the KINDS it lets through, in commit order
    "gathering.created": ["gathering.created"],
    "gathering.*": ["gathering.created", "gathering.member.joined"],
    "gathering.member*, session.created": ["session.created", "gathering.member.joined"],
    " session.created ,, participant.deleted ,": ["session.created", "participant.deleted"],  # lenient
    "*": KINDS,
    "": KINDS,  # empty: no filter
    "nothing.*": [],
}


def test_type_filters_exact_prefix_wildcard_and_all_live(mode, app, owner):
    tenant, project = owner.user.tenant_id, owner.project.id
    for types, expected in TYPE_CASES.items():
        reader = open_stream(app, headers=owner.headers, query_string={"types": types})
        for kind in KINDS:
            event(kind, tenant, project)
        sentinel = event(expected[0] if expected else "nothing.at.all", tenant, project)  # matches; comes last
        frames = reader.events(len(expected) + 1)
        reader.close()
        assert [f.fields["event"] for f in frames[:-1]] == expected, types
        assert frames[-1].fields["id"] == sentinel.id, types


def test_type_filters_on_the_replay_path(mode, app, owner):
    tenant, project = owner.user.tenant_id, owner.project.id
    start = event("start.marker", tenant, project)
    for kind in KINDS:
        event(kind, tenant, project)
    set_max_seconds(app, REPLAY_SECONDS)  # every event was committed before the stream: the replay decides
    for types, expected in TYPE_CASES.items():
        reader = open_stream(app, headers={**owner.headers, "Last-Event-ID": start.id}, query_string={"types": types})
        frames = [f for f in reader.rest() if f.is_event]
        assert [f.fields["event"] for f in frames] == expected, types


def test_resource_filter_matches_resource_ids_exactly(mode, app, client, owner):
    one = participant(client, owner, "one")
    two = participant(client, owner, "two")
    mark = last_event()
    set_max_seconds(app, REPLAY_SECONDS)  # every event is committed before a stream opens: the replay decides
    rid = {"one": f"participant:{one['id']}", "two": f"participant:{two['id']}"}
    for name in ("one", "two"):
        path = f"/api/projects/{owner.project.id}/participants/{(one if name == 'one' else two)['id']}"
        assert client.patch(path, json={"displayName": name.upper()}, headers=owner.headers).status_code == 200
    cases = {
        rid["one"]: [rid["one"]],
        f"{rid['two']},{rid['one']}": [rid["one"], rid["two"]],
        one["id"]: [],  # a bare id is not a resourceId
        "participant:unknown": [],
    }
    for resources, expected in cases.items():
        reader = open_stream(
            app, headers={**owner.headers, "Last-Event-ID": mark.id}, query_string={"resources": resources}
        )
        frames = [f for f in reader.rest() if f.is_event]
        assert [f.envelope["resourceId"] for f in frames] == expected, resources


@pytest.mark.parametrize(
    "query",
    [
        {"types": "session*created"},  # a '*' inside an item is literal: no type contains one
        {"types": "*.created"},
        {"types": ",".join(f"t{i}" for i in range(51))},
        {"types": "t" * 101},
        {"resources": ",".join(f"r{i}" for i in range(101))},
        {"resources": "r" * 256},
        {"types": "participant.created", "resources": "\u2028,\x16"},
    ],
)
def test_filters_never_reject_and_items_naming_nothing_match_nothing(mode, app, client, owner, query):
    """Every string the document allows is a valid filter (no 400 for a schema-valid request); an item that
    names no type or resource matches nothing, while the stream itself works."""
    participant(client, owner, "before")
    mark = last_event()
    participant(client, owner, "x")
    set_max_seconds(app, REPLAY_SECONDS)  # committed before the streams open: the replay decides
    for url in (STREAM, f"/api/projects/{owner.project.id}/events/stream"):
        reader = open_stream(app, url=url, headers={**owner.headers, "Last-Event-ID": mark.id}, query_string=query)
        assert [f for f in reader.rest() if f.is_event] == []
    reader = open_stream(app, headers={**owner.headers, "Last-Event-ID": mark.id},
                         query_string={"types": "participant.*,session*created"})
    assert [f.fields["event"] for f in reader.rest() if f.is_event] == ["participant.created"]


# ----------------------------------------------------------------- reconnecting


@pytest.mark.parametrize("how", ["header", "query"])
def test_reconnect_with_last_event_id_gets_exactly_the_missed_events_then_live(mode, how, app, client, owner):
    reader = open_stream(app, headers=owner.headers)
    participant(client, owner, "a")
    participant(client, owner, "b")
    [first] = reader.events(1)
    reader.close()  # disconnect after one event: "b" was missed
    missed = [participant(client, owner, name) for name in ("c", "d")]  # committed while disconnected

    if how == "header":
        reader = open_stream(app, headers={**owner.headers, "Last-Event-ID": first.fields["id"]})
    else:
        reader = open_stream(app, headers=owner.headers, query_string={"lastEventId": first.fields["id"]})
    db.close()
    replayed = reader.events(3)
    assert db.is_closed(), "the stream must not keep a database connection while it waits"
    live = participant(client, owner, "e")
    [after] = reader.events(1)
    reader.close()

    expected = [e.id for e in DomainEvent.select().order_by(DomainEvent.seq)]
    assert ids([first, *replayed, after]) == expected  # every event once, in order
    names = [f.envelope["payload"]["data"]["externalUserId"] for f in [*replayed, after]]
    assert names == ["b", "c", "d", "e"]
    assert [missed[0]["id"], missed[1]["id"], live["id"]] == [
        f.envelope["payload"]["data"]["id"] for f in [*replayed[1:], after]
    ]


def test_header_wins_over_the_query_parameter(bounded, app, client, owner):
    for name in "abc":
        participant(client, owner, name)
    first, second, _third = DomainEvent.select().order_by(DomainEvent.seq)
    set_max_seconds(app, 0.5)
    reader = open_stream(
        app, headers={**owner.headers, "Last-Event-ID": second.id}, query_string={"lastEventId": first.id}
    )
    assert [f.envelope["payload"]["data"]["externalUserId"] for f in reader.rest() if f.is_event] == ["c"]


def test_live_items_already_replayed_are_not_sent_twice(app, client, owner):
    """A lagging live dispatcher re-publishes events the replay sent: they are skipped by seq, nothing is lost."""
    set_max_seconds(app, MAX_SECONDS)
    fanout = LiveFanout()  # published to by hand, standing in for a dispatcher that lags behind the log
    app.extensions["cortex"].fanout = fanout
    try:
        for name in "abc":
            participant(client, owner, name)
        events = list(DomainEvent.select().order_by(DomainEvent.seq))
        reader = open_stream(app, headers={**owner.headers, "Last-Event-ID": events[0].id})
        participant(client, owner, "d")  # committed after the subscription, before the replay reads the log
        d_event = last_event()
        fanout.publish_events(events[1:] + [d_event])  # the lagging dispatcher catches up: all already replayed
        participant(client, owner, "e")
        fanout.publish_events([last_event()])
        frames = reader.events(4)
        reader.close()
    finally:
        app.extensions["cortex"].fanout = None
        fanout.stop()
    assert [f.envelope["payload"]["data"]["externalUserId"] for f in frames] == ["b", "c", "d", "e"]
    assert fanout.subscriber_count == 0


def test_unknown_pruned_or_foreign_last_event_id_replays_nothing_and_continues_live(
    mode, app, client, owner, stranger
):
    participant(client, owner, "before")
    foreign = participant(client, stranger, "theirs")
    foreign_event = DomainEvent.get(DomainEvent.resource_id == f"participant:{foreign['id']}")
    for last_id in (str(uuid.uuid4()), "not-a-uuid", foreign_event.id, "x" * 500):
        reader = open_stream(app, headers={**owner.headers, "Last-Event-ID": last_id})
        participant(client, owner, f"after-{last_id[:8]}")
        [frame] = reader.events(1)
        reader.close()
        assert frame.envelope["payload"]["data"]["externalUserId"] == f"after-{last_id[:8]}"


def test_event_committed_while_nothing_consumes_is_delivered_by_replay(app, client, owner, settings):
    """No stream and no dispatcher runs when the event commits; a live pipeline started later starts at the
    newest event, and the client's Last-Event-ID replays what it missed from the log."""
    set_max_seconds(app, MAX_SECONDS)
    participant(client, owner, "seen")
    seen = last_event()
    participant(client, owner, "committed while nobody listened")
    dispatcher, fanout = start_event_pipeline(settings, poll_interval=0.05)
    app.extensions["cortex"].fanout = fanout
    try:
        reader = open_stream(app, headers={**owner.headers, "Last-Event-ID": seen.id})
        participant(client, owner, "live")
        frames = reader.events(2)
        reader.close()
    finally:
        app.extensions["cortex"].fanout = None
        dispatcher.stop()
        fanout.stop()
    assert [f.envelope["payload"]["data"]["externalUserId"] for f in frames] == [
        "committed while nobody listened",
        "live",
    ]


# ----------------------------------------------------------------- tenancy and access


def test_tenant_stream_sees_nothing_of_another_tenant(mode, app, client, owner, stranger):
    mine = open_stream(app, headers=owner.headers)
    theirs = open_stream(app, headers=stranger.headers)
    participant(client, stranger, "stranger-1")
    event("tenant.notice", stranger.user.tenant_id, None)  # tenant-level, other tenant
    participant(client, owner, "owner-1")
    event("tenant.notice", owner.user.tenant_id, None)  # tenant-level, own tenant: visible to its members
    participant(client, stranger, "stranger-2")

    assert [f.envelope["tenantId"] for f in mine.events(2)] == [owner.user.tenant_id] * 2
    assert [f.envelope["tenantId"] for f in theirs.events(3)] == [stranger.user.tenant_id] * 3
    mine.close()
    theirs.close()


def test_project_scoped_api_key_sees_only_its_project_on_either_stream(mode, app, client, owner, api_key_headers):
    other_project, _secret = create_project(owner.user, "Game Two")
    bound = api_key_headers(["events:read"], project_id=owner.project.id)
    unbound = api_key_headers(["events:read"])
    streams = {
        "bound tenant": open_stream(app, headers=bound),
        "bound project": open_stream(app, f"/api/projects/{owner.project.id}/events/stream", headers=bound),
        "unbound tenant": open_stream(app, headers=unbound),
    }
    participant(client, owner, "in other project", project=other_project)
    event("tenant.notice", owner.user.tenant_id, None)
    participant(client, owner, "in bound project")

    for name in ("bound tenant", "bound project"):
        [frame] = streams[name].events(1)
        assert frame.envelope["projectId"] == owner.project.id, name
    frames = streams["unbound tenant"].events(3)
    assert [f.envelope.get("projectId") for f in frames] == [other_project.id, None, owner.project.id]
    for reader in streams.values():
        reader.close()
    other = client.get(f"/api/projects/{other_project.id}/events/stream", headers=bound)
    assert other.status_code == 404


def test_members_see_only_the_projects_they_belong_to_and_lose_them_when_removed(
    mode, app, client, owner, add_member, monkeypatch
):
    monkeypatch.setattr(sse, "ACCESS_RECHECK_SECONDS", 0.1)  # memberships are looked up again after this long
    developer = add_member("developer")  # member of owner.project only
    private, _secret = create_project(owner.user, "Owner Only")
    tenant_stream = open_stream(app, headers=developer.headers)
    project_stream = open_stream(app, f"/api/projects/{owner.project.id}/events/stream", headers=developer.headers)
    participant(client, owner, "private", project=private)
    participant(client, owner, "shared")
    [frame] = tenant_stream.events(1)
    assert frame.envelope["payload"]["data"]["externalUserId"] == "shared"
    [frame] = project_stream.events(1)
    assert frame.envelope["payload"]["data"]["externalUserId"] == "shared"

    ProjectMember.update(status="revoked").where(ProjectMember.user == developer.user.id).execute()
    time.sleep(0.15)  # what was looked up before the removal has expired
    participant(client, owner, "after removal")
    event("tenant.notice", owner.user.tenant_id, None)
    [frame] = tenant_stream.events(1)
    assert frame.envelope["type"] == "tenant.notice"  # the project's event was skipped
    tenant_stream.close()
    rest = project_stream.rest()
    assert not [f for f in rest if f.is_event]
    assert rest[-1].comments == ["closed (access)"]


def test_revoked_api_key_ends_its_stream(mode, app, client, owner, api_key_headers, monkeypatch):
    from models.identity import ApiKey

    monkeypatch.setattr(sse, "ACCESS_RECHECK_SECONDS", 0.1)
    headers = api_key_headers(["events:read"])
    reader = open_stream(app, headers=headers)
    participant(client, owner, "before revocation")
    [frame] = reader.events(1)
    ApiKey.update(revoked_at=ApiKey.created_at).execute()
    time.sleep(0.15)  # the key's earlier lookup has expired: the next event looks again
    participant(client, owner, "after revocation")
    rest = reader.rest()
    assert not [f for f in rest if f.is_event] and rest[-1].comments == ["closed (access)"]


def test_access_lookups_are_shared_by_all_streams_of_a_caller(mode, app, client, owner, monkeypatch):
    """Streams that opened together must not query memberships together: one lookup serves them all."""
    loads = []
    original = sse.Access._load
    monkeypatch.setattr(sse.Access, "_load", lambda self: loads.append(1) or original(self))
    monkeypatch.setattr(sse, "POLL_SECONDS", 0.02)  # poll mode: 20 streams read one after another
    readers = [open_stream(app, headers=owner.headers) for _ in range(20)]
    participant(client, owner, "for everyone")
    for reader in readers:
        [frame] = reader.events(1)
        assert frame.envelope["payload"]["data"]["externalUserId"] == "for everyone"
        reader.close()
    assert len(loads) == 1


def test_ttl_cache_expires_and_stays_bounded():
    cache = sse.TtlCache(limit=3)
    assert cache.put(("a",), 1, 60) == 1 and cache.get(("a",)) == 1
    cache.put(("gone",), 2, 0)
    assert cache.get(("gone",)) is None and cache.get(("missing",), "default") == "default"
    cache.put(("b",), 3, 60)
    cache.put(("c",), 4, 60)  # full: the expired entry makes room
    assert [cache.get((k,)) for k in "abc"] == [1, 3, 4]
    cache.put(("d",), 5, 60)  # full of live entries: start over
    assert cache.get(("a",)) is None and cache.get(("d",)) == 5


def test_project_stream_is_only_for_members(bounded, client, owner, stranger, api_key_headers):
    url = f"/api/projects/{stranger.project.id}/events/stream"
    assert client.get(url, headers=owner.headers).status_code == 404
    assert client.get(STREAM).status_code == 401
    assert client.get(f"/api/projects/{owner.project.id}/events/stream").status_code == 401
    assert client.get(STREAM, headers=api_key_headers(["sessions:read"])).status_code == 403


def test_project_stream_carries_only_that_project(mode, app, client, owner):
    other_project, _secret = create_project(owner.user, "Game Two")
    reader = open_stream(app, f"/api/projects/{owner.project.app_id}/events/stream", headers=owner.headers)
    participant(client, owner, "elsewhere", project=other_project)
    event("tenant.notice", owner.user.tenant_id, None)
    participant(client, owner, "here")
    [frame] = reader.events(1)
    reader.close()
    assert frame.envelope["payload"]["data"]["externalUserId"] == "here"


# ----------------------------------------------------------------- lifetime


def test_heartbeats_and_the_stream_ends_after_the_maximum_duration(mode, app, owner, monkeypatch):
    monkeypatch.setattr(sse, "HEARTBEAT_SECONDS", 0.2)
    set_max_seconds(app, 1.0)
    started = time.monotonic()
    reader = open_stream(app, headers=owner.headers)
    frames = reader.rest()
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 5, elapsed
    beats = [f for f in frames if f.comments == ["heartbeat"]]
    assert 2 <= len(beats) <= 6, frames  # every 0.2 s: four expected, fewer on a stalled machine
    assert frames[-1].comments == ["closed (max-duration)"]
    if mode == "push":
        assert app.extensions["cortex"].fanout.subscriber_count == 0


def test_client_disconnect_ends_the_subscription(mode, app, owner):
    if mode == "poll":
        pytest.skip("no subscription without a fan-out")
    fanout = app.extensions["cortex"].fanout
    reader = open_stream(app, headers=owner.headers)
    assert fanout.subscriber_count == 1
    reader.close()  # what the WSGI server does when the client goes away
    assert fanout.subscriber_count == 0
    # a response closed before its body was ever read never subscribes
    response = FlaskClient(app).get(STREAM, headers=owner.headers, buffered=False)
    response.close()
    assert fanout.subscriber_count == 0


def test_slow_client_overflow_ends_the_stream_and_a_reconnect_loses_nothing(app, client, owner):
    set_max_seconds(app, MAX_SECONDS)
    fanout = LiveFanout(queue_size=3)  # a queue of three stands in for a client that stopped reading
    app.extensions["cortex"].fanout = fanout
    try:
        participant(client, owner, "start")
        start = last_event()
        reader = open_stream(app, headers=owner.headers)
        for name in "abcde":
            participant(client, owner, name)
            fanout.publish_events([last_event()])
        rest = reader.rest()
        assert not [f for f in rest if f.is_event] and rest[-1].comments == ["closed (overflow)"]
        assert fanout.subscriber_count == 0

        set_max_seconds(app, 0.5)
        reader = open_stream(app, headers={**owner.headers, "Last-Event-ID": start.id})
        names = [f.envelope["payload"]["data"]["externalUserId"] for f in reader.rest() if f.is_event]
    finally:
        app.extensions["cortex"].fanout = None
        fanout.stop()
    assert names == list("abcde")


def test_fanout_stop_ends_open_streams(app, owner):
    set_max_seconds(app, MAX_SECONDS)
    fanout = LiveFanout()
    app.extensions["cortex"].fanout = fanout
    try:
        reader = open_stream(app, headers=owner.headers)
        fanout.stop()
        assert reader.rest()[-1].comments == ["closed (stopped)"]
    finally:
        app.extensions["cortex"].fanout = None


def test_head_answers_the_headers_without_streaming(bounded, app, owner):
    response = FlaskClient(app).head(STREAM, headers=owner.headers)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    assert response.get_data() == b""


# ----------------------------------------------------------------- setting


def test_sse_max_seconds_setting(tmp_path):
    assert Settings.from_env({}, data_dir=tmp_path).sse_max_seconds == 300
    assert Settings.from_env({"CORTEX_SSE_MAX_SECONDS": "2.5"}, data_dir=tmp_path).sse_max_seconds == 2.5
    assert Settings.from_env({"CORTEX_SSE_MAX_SECONDS": ""}, data_dir=tmp_path).sse_max_seconds == 300
    for bad in ("0", "-1", "abc", "inf", "nan"):
        with pytest.raises(ValueError, match="CORTEX_SSE_MAX_SECONDS"):
            Settings.from_env({"CORTEX_SSE_MAX_SECONDS": bad}, data_dir=tmp_path)


# ----------------------------------------------------------------- bounds and scopes


def test_a_principal_holds_at_most_the_configured_number_of_streams(bounded, app, client, owner, api_key_headers):
    runtime = app.extensions["cortex"]
    runtime.settings = replace(runtime.settings, sse_max_streams_per_principal=2)
    first = open_stream(app, headers=owner.headers)
    second = open_stream(app, f"/api/projects/{owner.project.id}/events/stream", headers=owner.headers)
    refused = FlaskClient(app).get(STREAM, headers=owner.headers, buffered=False)
    assert refused.status_code == 429
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    assert int(refused.headers["Retry-After"]) >= 1
    assert "CORTEX_SSE_MAX_STREAMS_PER_PRINCIPAL" in refused.get_json()["detail"]
    key = api_key_headers(["events:read"])  # an API key is a principal of its own
    keyed = open_stream(app, headers=key)
    first.close()  # closing a stream frees its slot at once
    third = open_stream(app, headers=owner.headers)
    for reader in (second, keyed, third):
        reader.close()
    assert runtime.streams.held(_principal_of(owner)) == 0


def test_a_stream_that_ends_on_its_own_frees_its_slot(app, client, owner):
    set_max_seconds(app, REPLAY_SECONDS)
    runtime = app.extensions["cortex"]
    runtime.settings = replace(runtime.settings, sse_max_streams_per_principal=1)
    reader = open_stream(app, headers=owner.headers)
    assert reader.rest()[-1].comments == ["closed (max-duration)"]
    open_stream(app, headers=owner.headers).close()


def _principal_of(member):
    from models.access import Principal

    return Principal(kind="user", tenant_id=member.user.tenant_id, user_id=member.user.id)


def test_message_events_need_the_transcripts_scope(mode, app, client, owner, api_key_headers):
    mark = event("tenant.notice", owner.user.tenant_id, None)
    without = api_key_headers(["events:read"])
    with_scope = api_key_headers(["events:read", "transcripts:read"])
    live = {"without": open_stream(app, headers=without), "with": open_stream(app, headers=with_scope),
            "user": open_stream(app, headers=owner.headers)}
    message = event("message.created", owner.user.tenant_id, owner.project.id, "message:m1")
    other = event("participant.created", owner.user.tenant_id, owner.project.id, "participant:p1")
    assert ids(live["without"].events(1)) == [other.id]  # the message is left out, the rest flows
    assert ids(live["with"].events(2)) == [message.id, other.id]
    assert ids(live["user"].events(2)) == [message.id, other.id]  # users are not limited by scopes
    for reader in live.values():
        reader.close()
    set_max_seconds(app, REPLAY_SECONDS)
    replayed = open_stream(app, headers={**without, "Last-Event-ID": mark.id}).rest()
    assert ids([f for f in replayed if f.is_event]) == [other.id]
    replayed = open_stream(app, headers={**without, "Last-Event-ID": mark.id},
                           query_string={"types": "message.*"}).rest()
    assert [f for f in replayed if f.is_event] == []


def test_stream_slots_are_shared_through_redis():
    import os

    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        pytest.skip("REDIS_URL is not set: slots are shared between processes through Redis")
    from models.access import Principal

    principal = Principal(kind="api_key", tenant_id="t", api_key_id=f"test-{uuid.uuid4().hex}")
    one, two = sse.StreamSlots(redis_url), sse.StreamSlots(redis_url)  # two serving processes
    first = one.acquire(principal, 2, 60)
    second = two.acquire(principal, 2, 60)
    assert first is not None and second is not None
    assert one.acquire(principal, 2, 60) is None and two.acquire(principal, 2, 60) is None
    first()
    third = one.acquire(principal, 2, 60)
    assert third is not None
    second()
    third()
    # a slot whose process died runs out on its own: here one taken with a clock far in the past
    stale = sse.StreamSlots(redis_url, clock=lambda: time.time() - 3600)
    assert stale.acquire(principal, 1, 60) is not None
    fresh = one.acquire(principal, 1, 60)
    assert fresh is not None
    fresh()
